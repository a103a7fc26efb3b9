//! Reports over the session log that look at the policy: which addresses are hit and by whom
//! (`sinkhole addresses`), and what a changed policy would have answered (`sinkhole policy
//! replay`). Both read the log with `campaign::log` (rotated files included) in one pass.

pub mod addresses;
pub mod replay;
