//! `cargo xtask setup`: makes a fresh machine ready to build and test sinkhole.
//!
//! Every step first checks whether its piece is already there and does nothing if so, so a
//! ready machine costs a few process spawns and prints nothing. What cannot be installed (not
//! root, no rustup) is named together with the command that would install it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{is_root, run_quiet, status_ok};

/// Debian packages the tests and benchmarks drive, each with a binary that shows it is there.
const TEST_PEERS: &[(&str, &str)] = &[
    ("rbldnsd", "/usr/sbin/rbldnsd"),
    ("nsd", "/usr/sbin/nsd"),
    ("swaks", "/usr/bin/swaks"),
    // swaks --tls needs Net::SSLeay (only recommended by swaks); its module path depends on the
    // Perl version and architecture, the copyright file does not.
    (
        "libnet-ssleay-perl",
        "/usr/share/doc/libnet-ssleay-perl/copyright",
    ),
    ("openssl", "/usr/bin/openssl"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("xdp-tools", "/usr/sbin/xdp-filter"),
    ("postfix", "/usr/sbin/smtp-sink"),
    ("iproute2", "/usr/sbin/ip"),
    ("util-linux", "/usr/bin/nsenter"),
    ("python3", "/usr/bin/python3"),
    // promtool, for the alert rules in packaging/prometheus.
    ("prometheus", "/usr/bin/promtool"),
    // Renders `sinkhole campaigns --html` headless in the campaign replay test.
    ("chromium", "/usr/bin/chromium"),
    // Booted in namespaces of its own by the unit test (PID 1 here is not systemd).
    ("systemd", "/lib/systemd/systemd"),
];

pub fn setup() -> Result<()> {
    let mut missing = Vec::new();
    if let Err(e) = nightly_rust_src() {
        missing.push(e.to_string());
    }
    if let Err(e) = bpf_linker() {
        missing.push(e.to_string());
    }
    if let Err(e) = test_peers() {
        missing.push(e.to_string());
    }
    if let Err(e) = bpffs() {
        missing.push(e.to_string());
    }
    if !missing.is_empty() {
        bail!("setup is incomplete:\n  - {}", missing.join("\n  - "));
    }
    Ok(())
}

/// The eBPF crate builds with nightly's `-Z build-std=core`, which needs `rust-src`.
fn nightly_rust_src() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly`")?;
    if !sysroot.status.success() {
        bail!(
            "no nightly toolchain: install it with `rustup toolchain install nightly --component rust-src`"
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    run_quiet(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("`rustup component add rust-src --toolchain nightly` failed")
}

/// bpf-linker, built against the nightly toolchain's own libLLVM (no system LLVM needed).
/// The linker finds libLLVM at run time through the prefix folder, so that folder stays.
fn bpf_linker() -> Result<()> {
    if status_ok(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly`")?;
    let lib = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.22") || n.starts_with("libLLVM-22"))
        })
        .with_context(|| format!("no libLLVM 22 in {}", lib.display()))?;
    let prefix = llvm_prefix();
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in [
        prefix_lib.join(llvm.file_name().expect("a file name")),
        prefix_lib.join("libLLVM.so"),
    ] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), llvm.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker against {} (a few minutes, once)",
        llvm.display()
    );
    run_quiet(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "^0.13"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &prefix),
    )
    .with_context(|| {
        format!(
            "installing bpf-linker failed; by hand: `LLVM_PREFIX={} cargo install bpf-linker --no-default-features --features llvm-22`",
            prefix.display()
        )
    })
}

/// A folder that outlives the build: bpf-linker loads libLLVM through it.
fn llvm_prefix() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/sinkhole/llvm")
}

fn test_peers() -> Result<()> {
    let missing: Vec<&str> = TEST_PEERS
        .iter()
        .filter(|(_, bin)| !Path::new(bin).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!("missing test peers; as root: `{command}`");
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    let noninteractive = [("DEBIAN_FRONTEND", "noninteractive")];
    run_quiet(Command::new("apt-get").arg("update").envs(noninteractive))
        .context("`apt-get update` failed")?;
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .envs(noninteractive),
    )
    .with_context(|| format!("`{command}` failed"))?;
    if missing.contains(&"postfix") {
        // Only its smtp-sink/smtp-source are wanted; a running Postfix would hold port 25.
        let _ = run_quiet(Command::new("postfix").arg("stop"));
    }
    if missing.contains(&"nsd") {
        let _ = run_quiet(Command::new("service").args(["nsd", "stop"]));
    }
    Ok(())
}

/// The pinned maps live on bpffs, which a fresh machine does not mount.
fn bpffs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted; as root: `mount -t bpf bpf /sys/fs/bpf`");
    }
    run_quiet(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("`mount -t bpf bpf /sys/fs/bpf` failed")
}
