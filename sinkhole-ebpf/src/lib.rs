//! Host-side stub so `sinkhole-user` can name this crate as a build dependency (cargo then
//! rebuilds the embedded object when it changes). The program itself is `src/main.rs`.
#![no_std]
