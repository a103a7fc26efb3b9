//! Who asked for a block (the recipient verdicts are in [`crate::verdict`]).

/// Who asked for a block, for `sinkhole_blocks_total{source}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSource {
    Dnsbl,
    Policy,
    Campaign,
}

impl BlockSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            BlockSource::Dnsbl => "dnsbl",
            BlockSource::Policy => "policy",
            BlockSource::Campaign => "campaign",
        }
    }
}
