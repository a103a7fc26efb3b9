//! Types shared by the XDP program (`sinkhole-ebpf`) and userspace (`sinkhole-user`).
//!
//! Everything here is `#[repr(C)]` and `no_std`: it is the binary layout of the BPF maps.
#![no_std]
