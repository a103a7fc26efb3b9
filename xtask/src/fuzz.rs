//! Bounded fuzzing runs (`cargo xtask test` under `CI=true`): every cargo-fuzz target in `fuzz/`
//! for a fixed number of inputs from a fixed seed, on a copy of its seed corpus, so generated
//! inputs never land in the repo. The same commit then explores nearly the same inputs on every
//! machine (coverage feedback still varies a little: the targets' hash maps are seeded per
//! process), so CI rarely depends on one run's luck. A crash fails with the target's name and
//! the file that reproduces it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{run_quiet, status_ok, workspace_root};

/// The targets of `fuzz/Cargo.toml`, each with its seed corpus in `fuzz/corpus/<target>/`, and
/// the inputs a run tries: about 45 s each on the 2-core development VM.
pub const TARGETS: [(&str, u64); 5] = [
    ("smtp_command", 3_000_000),
    ("smtp_session", 100_000),
    ("split_invariance", 50_000),
    ("config_parse", 100_000),
    ("policy_parse", 120_000),
];

/// libFuzzer's seed for every run.
const SEED: u32 = 1;
/// A slower machine stops a target after this long, having tried a prefix of the same inputs.
const MAX_SECONDS: u64 = 150;

/// Runs every target (one worker, one core each, one after the other).
pub fn run_all() -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let work = root.join("target").join("fuzz");
    for (target, runs) in TARGETS {
        run_target(&root, &work, target, runs)?;
    }
    Ok(())
}

/// `cargo +nightly ...` through the rustup proxy, without what `cargo xtask` pinned to its own
/// toolchain.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    cmd
}

fn ensure_cargo_fuzz() -> Result<()> {
    if !status_ok(nightly_cargo().arg("--version")) {
        bail!("fuzzing needs the nightly toolchain: rustup toolchain install nightly");
    }
    if status_ok(nightly_cargo().args(["fuzz", "--version"])) {
        return Ok(());
    }
    println!("installing cargo-fuzz");
    run_quiet(nightly_cargo().args(["install", "--locked", "cargo-fuzz"]))
}

fn run_target(root: &Path, work: &Path, target: &str, runs: u64) -> Result<()> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let log = work.join(format!("{target}.log"));
    // A fresh copy of the seeds each time: the run adds what it finds there, not in the repo.
    for dir in [&corpus, &artifacts] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    copy_seeds(&root.join("fuzz").join("corpus").join(target), &corpus)?;
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = nightly_cargo()
        .current_dir(root)
        // The sanitizer build does not need the eBPF object (sinkhole-user/build.rs).
        .env("AYA_BUILD_SKIP", "1")
        .args(["fuzz", "run", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-seed={SEED}"))
        .arg(format!("-runs={runs}"))
        .arg(format!("-max_total_time={MAX_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // One input taking this long is a hang, reported like a crash.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let found = fs::read_dir(&artifacts)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path().display().to_string()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let reproduce = match found.first() {
            Some(input) => {
                format!("input {input}; reproduce with `cargo +nightly fuzz run {target} {input}`")
            }
            None => "no input saved (a build or set-up failure?)".to_owned(),
        };
        bail!(
            "fuzz target {target} failed ({status}): {reproduce}; log {}",
            log.display()
        );
    }
    println!("fuzz {target}: {}", summary(&text));
    Ok(())
}

fn copy_seeds(from: &Path, to: &Path) -> Result<()> {
    let entries = fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    for entry in entries {
        let path: PathBuf = entry?.path();
        if let Some(name) = path.file_name().filter(|_| path.is_file()) {
            fs::copy(&path, to.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// `Done N runs in S second(s); cov C, ft F, corpus K` from libFuzzer's last lines.
fn summary(log: &str) -> String {
    let done = log
        .lines()
        .rev()
        .find(|l| l.starts_with("Done "))
        .unwrap_or("Done ? runs");
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains(" cov: "))
        .unwrap_or("");
    let field = |name: &str| {
        last.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .unwrap_or("?")
            .to_owned()
    };
    format!(
        "{done}; cov {}, ft {}, corpus {}",
        field("cov:"),
        field("ft:"),
        field("corp:")
    )
}
