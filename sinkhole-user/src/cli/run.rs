//! `sinkhole run`: the daemon ([`crate::daemon`]), until it is stopped; with `--background`,
//! a daemon started detached that this command waits to see serving, for a service manager's
//! reload (`ExecReload=`).

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::process::getppid;

use crate::config::Config;
use crate::{daemon, handover};

/// How long a daemon started with `--background` may take to serve.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// `sinkhole run [--takeover]`: serves, printing nothing (the daemon logs).
pub fn serve(
    config: &Config,
    config_file: Option<&Path>,
    takeover: bool,
) -> anyhow::Result<String> {
    daemon::run(config, config_file, takeover)?;
    Ok(String::new())
}

/// `sinkhole run --takeover --background`: starts `sinkhole run --takeover` detached (see
/// [`spawn_detached`]; it inherits `$NOTIFY_SOCKET` and tells the service manager it is the main
/// process now) and returns once it serves, its pid in `STORAGE/sinkhole.pid`, leaving it
/// running. Fails if it exits first or does not serve within [`READY_WITHIN`].
pub fn serve_in_background(config: &Config, config_file: Option<&Path>) -> anyhow::Result<String> {
    let mut middle = this_run(config_file, BackgroundStep::Spawn)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the new daemon")?;
    let mut said = String::new();
    middle
        .stdout
        .take()
        .context("the starter's stdout")?
        .read_to_string(&mut said)
        .context("reading the new daemon's pid")?;
    let status = middle.wait()?;
    let pid: u32 = match said.trim().parse() {
        Ok(pid) if status.success() => pid,
        _ => bail!("starting the new daemon failed ({status}): {said}"),
    };
    let deadline = Instant::now() + READY_WITHIN;
    while !handover::names(&config.storage.dir, pid) {
        if !handover::is_running_sinkhole(pid) {
            bail!("the new daemon (pid {pid}) exited before serving (its log says why)");
        }
        if Instant::now() > deadline {
            bail!(
                "the new daemon (pid {pid}) is not serving after {}s",
                READY_WITHIN.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!("sinkhole (pid {pid}) serves\n"))
}

/// The hidden `--background-step` of `sinkhole run --takeover --background`, which starts the
/// new daemon by a double fork: `sinkhole run --takeover --background` starts a middle process
/// (`spawn`), which starts the daemon (`daemon:PID`, PID the middle one's), says its pid and
/// exits at once. The daemon's parent is then the service manager (the init of its PID
/// namespace, or the nearest subreaper), which is what systemd needs of a main process that a
/// reload hands it (`MAINPID=`): a child of its own it waits for on stop, sending SIGTERM and
/// letting it finish its sessions; one that is not (as a child of the reload's process would
/// be when it says `MAINPID=`) it cannot see exit, and so kills at once with SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackgroundStep {
    /// The middle process: starts the daemon, prints its pid, exits.
    Spawn,
    /// The daemon: waits until the middle process (this pid) is gone, then takes over.
    Daemon { middle: u32 },
}

impl std::str::FromStr for BackgroundStep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "spawn" => Ok(BackgroundStep::Spawn),
            Some(("daemon", pid)) => pid
                .parse()
                .map(|middle| BackgroundStep::Daemon { middle })
                .map_err(|e| format!("{pid}: {e}")),
            _ => Err("spawn or daemon:PID".into()),
        }
    }
}

/// `sinkhole run --takeover --background-step STEP [--config FILE]`, this binary.
fn this_run(config_file: Option<&Path>, step: BackgroundStep) -> anyhow::Result<Command> {
    let mut command = Command::new(std::env::current_exe().context("finding this binary")?);
    command.args(["run", "--takeover", "--background-step"]);
    command.arg(match step {
        BackgroundStep::Spawn => "spawn".to_owned(),
        BackgroundStep::Daemon { middle } => format!("daemon:{middle}"),
    });
    if let Some(file) = config_file {
        command.arg("--config").arg(file);
    }
    Ok(command)
}

/// `spawn`: starts the daemon and returns its pid, to print, without waiting for it.
pub fn spawn_detached(config_file: Option<&Path>) -> anyhow::Result<String> {
    let middle = BackgroundStep::Daemon {
        middle: std::process::id(),
    };
    let daemon = this_run(config_file, middle)?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the new daemon")?;
    Ok(format!("{}\n", daemon.id()))
}

/// `daemon:PID`: once the middle process `middle` that started this one has exited (it exits
/// as soon as it has started this one), takes over. Fails if it has not within
/// [`READY_WITHIN`], when `--background` has given up on this daemon too.
pub fn serve_detached(
    config: &Config,
    config_file: Option<&Path>,
    middle: u32,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + READY_WITHIN;
    while getppid().is_some_and(|parent| parent.as_raw_nonzero().get() as u32 == middle) {
        if Instant::now() > deadline {
            bail!(
                "the process that started this daemon (pid {middle}) has not exited after {}s; \
                 not taking over",
                READY_WITHIN.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    serve(config, config_file, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_steps_read_back_as_written() {
        assert_eq!("spawn".parse(), Ok(BackgroundStep::Spawn));
        assert_eq!(
            "daemon:4242".parse(),
            Ok(BackgroundStep::Daemon { middle: 4242 })
        );
        assert!("daemon".parse::<BackgroundStep>().is_err());
        assert!("daemon:x".parse::<BackgroundStep>().is_err());
        assert!("spawn:1".parse::<BackgroundStep>().is_err());
    }
}
