//! `cargo xtask`: the project's own commands. `setup` makes a machine ready (called by all the
//! others), `run` runs the daemon, `test` runs every test, `bench` the benchmarks.

mod deb;
mod demo;
mod deploy;
mod fuzz;
mod package;
mod setup;
mod update;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (nightly rust-src, bpf-linker, test peers, bpffs).
    Setup,
    /// Build (release) and run the daemon; arguments after `--` go to `sinkhole run`.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test; arguments after `--` go to `cargo test`.
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install the release binary, the systemd unit, a default config, man pages, completions
    /// and docs under DIR.
    Deploy {
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Build and install the release binary (as `deploy`), then replace the running daemon
    /// with no gap (`sinkhole run --takeover`, logging to --log).
    Update {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long, default_value = "/etc/sinkhole/sinkhole.toml")]
        config: PathBuf,
        #[arg(long, default_value = "/var/log/sinkhole.log")]
        log: PathBuf,
    },
    /// Build a Debian package of the release build (target/deb/sinkhole_VERSION_ARCH.deb).
    Deb,
    /// A first look (root, under a minute): the daemon with XDP in network namespaces, a spam
    /// campaign replayed against it, its scores, blocks and drop counters as they happen.
    Demo,
    /// Run a benchmark and print its figures.
    Bench {
        #[arg(value_enum)]
        which: Bench,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Bench {
    Xdp,
    Smtp,
    Score,
    Hostile,
    Campaigns,
    Greet,
    History,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    setup::setup()?;
    match task {
        Task::Setup => Ok(()),
        Task::Run { args } => {
            cargo(&["build", "--release", "-p", "sinkhole-user"])?;
            let bin = workspace_root().join("target/release/sinkhole");
            let mut cmd = Command::new(&bin);
            cmd.arg("run").args(args);
            exec(cmd)
        }
        Task::Test { args } => {
            // The integration tests drive the real binary; build it first so they find it.
            cargo(&["build", "-p", "sinkhole-user"])?;
            let bin = workspace_root().join("target/debug/sinkhole");
            // The default members: the eBPF crate is built (by aya-build) for the BPF target only.
            // The package test installs a package of that same binary.
            let package = deb::deb(deb::Build::Debug)?;
            let mut cmd = cargo_command();
            cmd.arg("test")
                .args(args)
                .env("SINKHOLE_BIN", bin)
                .env("SINKHOLE_DEB", package);
            exec(cmd)?;
            // CI also gives every fuzz target a bounded run from its seed corpus.
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                fuzz::run_all()?;
            }
            Ok(())
        }
        Task::Deploy { root } => deploy::deploy(&root),
        Task::Update { root, config, log } => update::update(&root, &config, &log),
        Task::Deb => deb::deb(deb::Build::Release).map(drop),
        Task::Demo => demo::demo(),
        Task::Bench { which } => bench(which),
    }
}

/// Each benchmark is a `harness = false` bench of the tests crate, measuring sinkhole beside
/// its peer in the same run and printing the ratio.
fn bench(which: Bench) -> Result<()> {
    let name = match which {
        Bench::Xdp => "xdp",
        Bench::Smtp => "smtp",
        Bench::Score => "score",
        Bench::Hostile => "hostile",
        Bench::Campaigns => "campaigns",
        Bench::Greet => "greet",
        Bench::History => "history",
    };
    cargo(&["bench", "-p", "sinkhole-tests", "--bench", name])
}

/// Cargo, showing its progress: `.cargo/config.toml` quiets the cargo that aya-build runs
/// inside the build through `[env]`, which `cargo xtask` itself inherits.
fn cargo_command() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.env_remove("CARGO_TERM_QUIET");
    cmd
}

/// Runs cargo with `args` in the workspace, failing on a non-zero exit.
pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let status = cargo_command()
        .args(args)
        .current_dir(workspace_root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

/// Runs `cmd` in the foreground and passes its failure on.
fn exec(mut cmd: Command) -> Result<()> {
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}

/// Runs `cmd` with its output captured, showing it only if it fails.
pub(crate) fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} exited with {}:\n{}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Whether `cmd` runs and exits 0.
pub(crate) fn status_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn is_root() -> bool {
    // The effective uid (second field of `Uid:`), read from /proc to avoid a libc dependency.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
