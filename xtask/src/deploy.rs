//! `cargo xtask deploy [--root DIR]`: installs under DIR (`/` on a host, a staging folder for
//! packaging) what [`crate::package`] lists, into `/usr/local`: the release binary, the systemd
//! unit, sysusers.d and tmpfiles.d entries, a commented default config, man pages, shell
//! completions and the docs. On a host it also creates the `sinkhole` system user the config's
//! `run_as` names.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::package::{self, LOCAL};
use crate::{cargo, run_quiet, status_ok, workspace_root};

/// The user the packaged config runs as.
const USER: &str = "sinkhole";

pub fn deploy(root: &Path) -> Result<()> {
    cargo(&["build", "--release", "-p", "sinkhole-user"])?;
    let on_host = root == Path::new("/");
    package::stage(
        root,
        &workspace_root().join("target/release/sinkhole"),
        &LOCAL,
    )?;
    let state = root.join("var/lib/sinkhole");
    fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    fs::set_permissions(&state, fs::Permissions::from_mode(0o750))?;

    if on_host {
        if !status_ok(Command::new("id").arg(USER)) {
            run_quiet(Command::new("useradd").args([
                "--system",
                "--home-dir",
                "/var/lib/sinkhole",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ]))
            .with_context(|| format!("creating the system user `{USER}`"))?;
        }
        run_quiet(Command::new("chown").args([
            "-R",
            &format!("{USER}:{USER}"),
            "/var/lib/sinkhole",
        ]))?;
        if !status_ok(Command::new("systemctl").arg("daemon-reload")) {
            eprintln!(
                "xtask: systemd is not running here; start with `sinkhole run --config /etc/sinkhole/sinkhole.toml`"
            );
        }
    }
    println!("installed into {}", root.display());
    Ok(())
}

pub(crate) fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Copy beside and rename, so a running binary is replaced, never written into.
    let tmp = to.with_extension("xtask-new");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))
}
