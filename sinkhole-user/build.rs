//! Builds the XDP program (`sinkhole-ebpf`) for the BPF target and places the object in
//! `OUT_DIR/sinkhole`, where `kernel` embeds it.
//!
//! `AYA_BUILD_SKIP=1` (for clippy and docs) skips the eBPF build; an empty object is left in
//! its place so the crate still compiles, and loading it fails with a message saying why.
use std::path::Path;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("{manifest_dir} has no parent"))?
        .join("sinkhole-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sinkhole-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let object = Path::new(&std::env::var("OUT_DIR").context("OUT_DIR")?).join("sinkhole");
    if !object.exists() {
        std::fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
