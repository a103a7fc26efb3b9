//! `sinkhole run`: the daemon ([`crate::daemon`]), until it is stopped; with `--background`,
//! a daemon started as a child that this command waits to see serving, for a service manager's
//! reload (`ExecReload=`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

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

/// `sinkhole run --takeover --background`: starts `sinkhole run --takeover` as a child (it
/// inherits `$NOTIFY_SOCKET` and tells the service manager it is the main process now) and
/// returns once it serves, its pid in `STORAGE/sinkhole.pid`, leaving it running. Fails if it
/// exits first or does not serve within [`READY_WITHIN`].
pub fn serve_in_background(config: &Config, config_file: Option<&Path>) -> anyhow::Result<String> {
    let mut command = Command::new(std::env::current_exe().context("finding this binary")?);
    command.args(["run", "--takeover"]);
    if let Some(file) = config_file {
        command.arg("--config").arg(file);
    }
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .context("starting the new daemon")?;
    let pid = child.id();
    let deadline = Instant::now() + READY_WITHIN;
    while !handover::names(&config.storage.dir, pid) {
        if let Some(status) = child.try_wait()? {
            bail!("the new daemon (pid {pid}) exited before serving: {status}");
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
