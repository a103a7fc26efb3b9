//! Builds the XDP program (`sinkhole-ebpf`) for the BPF target and places the object in
//! `OUT_DIR`, where `kernel` embeds it with `include_bytes_aligned!`.
//! `AYA_BUILD_SKIP=1` skips it (clippy, docs).
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
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
    // With AYA_BUILD_SKIP there is no object; an empty one keeps `include_bytes_aligned!`
    // compiling (clippy, docs). Loading it fails with a parse error, never silently.
    let object =
        std::path::Path::new(&std::env::var("OUT_DIR").context("OUT_DIR")?).join("sinkhole");
    if !object.exists() {
        std::fs::write(&object, b"").with_context(|| object.display().to_string())?;
    }
    Ok(())
}
