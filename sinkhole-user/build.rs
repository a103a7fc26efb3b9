//! Builds the XDP program (`sinkhole-ebpf`) for the BPF target and places the object in
//! `OUT_DIR/sinkhole`, where `kernel` embeds it.
//!
//! `AYA_BUILD_SKIP=1` (for clippy and docs) skips the eBPF build; an empty object is left in
//! its place so the crate still compiles, and loading it fails with a message saying why.
//!
//! Also names the build for `--version` and `sinkhole_build_info`: `SINKHOLE_COMMIT` (the
//! checkout's commit, `unknown` outside git) and `SINKHOLE_BUILD_DATE`, set again whenever the
//! checkout moves to another commit.
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

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
    name_the_build(&manifest_dir);
    let object = Path::new(&std::env::var("OUT_DIR").context("OUT_DIR")?).join("sinkhole");
    if !object.exists() {
        std::fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}

/// `SINKHOLE_COMMIT` and `SINKHOLE_BUILD_DATE` for the crate, and the git files whose change
/// means another commit (HEAD, the branch it names, the packed refs).
fn name_the_build(manifest_dir: &str) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|text| !text.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=SINKHOLE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    println!("cargo:rustc-env=SINKHOLE_BUILD_DATE={}", &date[..10]);
    if commit.is_some() {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            // A missing file would count as changed at every build.
            if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name])
                .filter(|path| Path::new(path).exists())
            {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
