//! `cargo xtask deb`: a Debian package of the release build, `target/deb/sinkhole_V_ARCH.deb`,
//! holding what `deploy` installs (see [`crate::package`]) under `/usr`, the config as a
//! conffile, and maintainer scripts that create the user and the storage (systemd-sysusers and
//! systemd-tmpfiles where present, else useradd and install) and tell systemd of the unit.
//! `cargo xtask test` builds one from the debug binary for the package test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::package::{self, CONFIG, PACKAGE};
use crate::{cargo, run_quiet, workspace_root};

/// Which build goes into the package.
#[derive(Clone, Copy)]
pub enum Build {
    /// `cargo build --release`, compressed as Debian does (xz).
    Release,
    /// The debug binary already built, uncompressed: quick, for the package test.
    Debug,
}

/// Builds the package; returns its path.
pub fn deb(build: Build) -> Result<PathBuf> {
    let target = workspace_root().join("target");
    let binary = match build {
        Build::Release => {
            cargo(&["build", "--release", "-p", "sinkhole-user"])?;
            target.join("release/sinkhole")
        }
        Build::Debug => target.join("debug/sinkhole"),
    };
    let version = version(&binary)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("sinkhole_{version}_{arch}");
    let root = target.join("deb").join(&name);
    let _ = fs::remove_dir_all(&root);
    package::stage(&root, &binary, &PACKAGE)?;

    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let installed_kib = output(Command::new("du").args(["-sk", "--"]).arg(&root))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string();
    fs::write(
        debian.join("control"),
        format!(
            "Package: sinkhole\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: sinkhole developers <sinkhole@localhost>\n\
             Installed-Size: {installed_kib}\n\
             Depends: libc6\n\
             Section: mail\n\
             Priority: optional\n\
             Description: SMTP sinkhole for spamtrap hosts, with XDP drops\n \
             Speaks ESMTP on port 25 (PIPELINING, STARTTLS), logs every command and reply,\n \
             captures every message to a Maildir, scores clients against DNSBLs and\n \
             reverse DNS, groups sessions into campaigns, and drops the worst clients'\n \
             packets in the kernel with an XDP program.\n"
        ),
    )?;
    fs::write(debian.join("conffiles"), format!("/{CONFIG}\n"))?;
    for script in ["postinst", "prerm", "postrm"] {
        crate::deploy::install(
            &workspace_root().join("packaging/debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    let deb = target.join("deb").join(format!("{name}.deb"));
    let compression = match build {
        Build::Release => "-Zxz",
        Build::Debug => "-Znone",
    };
    run_quiet(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", compression, "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    println!("{}", deb.display());
    Ok(deb)
}

/// The release named by `binary --version` (`sinkhole 0.1.0 (commit ...)`).
fn version(binary: &Path) -> Result<String> {
    let line = output(Command::new(binary).arg("--version"))?;
    match line.split_whitespace().nth(1) {
        Some(version) => Ok(version.to_string()),
        None => bail!("`{} --version` said {line:?}", binary.display()),
    }
}

/// What `cmd` prints, trimmed; an error if it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
