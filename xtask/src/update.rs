//! `cargo xtask update [--root DIR] [--config FILE] [--log FILE]`: builds the release binary,
//! installs it as `deploy` does, and replaces the running daemon with no gap by starting the
//! new one with `sinkhole run --takeover` (see the README's "Updating"): the new program is
//! swapped into the pinned XDP link in one step, the new daemon listens beside the old one
//! (SO_REUSEPORT), then stops it (SIGTERM: it finishes its sessions). This waits until the new
//! daemon has said so in its log.
//!
//! Under systemd (the unit active) it installs the binary and runs `systemctl reload sinkhole`
//! instead: the unit's `ExecReload=` starts the new daemon the same way, inside the unit, and
//! the new daemon tells systemd it is the main process (`MAINPID=`, `Type=notify`).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::deploy::install;
use crate::{cargo, status_ok, workspace_root};

/// How long the new daemon may take to load, attach and listen.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub fn update(root: &Path, config: &Path, log: &Path) -> Result<()> {
    cargo(&["build", "--release", "-p", "sinkhole-user"])?;
    let bin = root.join("usr/local/bin/sinkhole");
    install(
        &workspace_root().join("target/release/sinkhole"),
        &bin,
        0o755,
    )?;
    if status_ok(Command::new("systemctl").args(["is-active", "--quiet", "sinkhole"])) {
        // ExecReload= takes over with no gap and hands systemd the new main pid.
        let reloaded = Command::new("systemctl")
            .args(["reload", "sinkhole"])
            .status()
            .context("running systemctl reload sinkhole")?;
        if !reloaded.success() {
            bail!("`systemctl reload sinkhole` failed ({reloaded}): see `journalctl -u sinkhole`");
        }
        println!("sinkhole.service reloaded: the new daemon serves");
        return Ok(());
    }

    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let from = log_file.seek(SeekFrom::End(0))?;
    let mut daemon = Command::new(&bin);
    daemon
        .args(["run", "--takeover", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        // Its own process group: a Ctrl-C at this terminal does not reach the daemon.
        .process_group(0);
    let mut child = daemon
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let said = log_since(log, from)?;
        if let Some(line) = said
            .lines()
            .find(|l| l.contains("took over from pid") || l.contains("no daemon was running"))
        {
            println!("updated: new daemon pid {}; {line}", child.id());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the new daemon exited ({status}) before taking over:\n{said}");
        }
        if Instant::now() > deadline {
            bail!("the new daemon has not taken over within {READY_WITHIN:?}:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `log` has gained since byte `from`.
fn log_since(log: &Path, from: u64) -> Result<String> {
    let mut file = File::open(log)?;
    file.seek(SeekFrom::Start(from))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}
