//! The Debian package (`cargo xtask deb`; `cargo xtask test` builds one from the debug binary
//! and names it in `SINKHOLE_DEB`): installed with apt-get on this machine, it brings the
//! binary, its man pages, completions, unit, user and storage; purged, it leaves nothing of its
//! own behind but the trap's data and user.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use sinkhole_tests::skip;

/// Runs `program args`; (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_debian_package_installs_runs_and_purges_cleanly() {
    let test = "the_debian_package_installs_runs_and_purges_cleanly";
    let Some(deb) = std::env::var_os("SINKHOLE_DEB") else {
        skip(
            test,
            "SINKHOLE_DEB is not set (`cargo xtask test` builds the package)",
        );
        return;
    };
    if !rustix::process::geteuid().is_root() {
        skip(test, "installing a package needs root");
        return;
    }
    // /etc/sinkhole and /usr/bin/sinkhole are the machine's while the package is in.
    let _machine = sinkhole_tests::exclusive();
    let deb = Path::new(&deb);
    let (installed, log) = run("apt-get", &["install", "-y", deb.to_str().unwrap()]);
    assert!(installed, "{log}");

    let (ok, version) = run("/usr/bin/sinkhole", &["--version"]);
    let (man_ok, man) = run("man", &["-w", "sinkhole"]);
    let (run_man_ok, run_man) = run("man", &["-w", "sinkhole-run"]);
    let (user_ok, user) = run("id", &["-u", "sinkhole"]);
    let storage = fs::metadata("/var/lib/sinkhole");
    // The packaged config, read by default, names that user and storage.
    let (config_ok, config) = run("/usr/bin/sinkhole", &["check-config", "--verbose"]);
    let files = [
        "/lib/systemd/system/sinkhole.service",
        "/usr/lib/sysusers.d/sinkhole.conf",
        "/usr/lib/tmpfiles.d/sinkhole.conf",
        "/usr/share/bash-completion/completions/sinkhole",
        "/usr/share/zsh/vendor-completions/_sinkhole",
        "/usr/share/fish/vendor_completions.d/sinkhole.fish",
        "/usr/share/doc/sinkhole/README.md",
        "/usr/share/doc/sinkhole/docs/reliability.md",
        "/usr/share/sinkhole/prometheus/sinkhole.rules.yml",
        "/usr/share/sinkhole/grafana/sinkhole.json",
        "/etc/sinkhole/sinkhole.toml",
    ];
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !Path::new(f).exists())
        .collect();
    let unit = fs::read_to_string(files[0]).unwrap_or_default();

    let (purged, purge_log) = run("apt-get", &["purge", "-y", "sinkhole"]);
    let (still_known, _) = run("dpkg", &["-s", "sinkhole"]);
    let left: Vec<&str> = files
        .iter()
        .copied()
        .chain(["/usr/bin/sinkhole", "/usr/share/man/man1/sinkhole.1.gz"])
        .filter(|f| Path::new(f).exists())
        .collect();

    assert!(ok && version.starts_with("sinkhole "), "{version}");
    assert!(
        man_ok && man.trim() == "/usr/share/man/man1/sinkhole.1.gz",
        "{man}"
    );
    assert!(
        run_man_ok && run_man.contains("sinkhole-run.1"),
        "{run_man}"
    );
    assert!(user_ok, "no sinkhole user: {user}");
    let storage = storage.expect("/var/lib/sinkhole made");
    assert_eq!(storage.uid().to_string(), user.trim());
    assert!(config_ok, "{config}");
    assert!(
        config.contains("configuration /etc/sinkhole/sinkhole.toml"),
        "{config}"
    );
    assert!(missing.is_empty(), "not installed: {missing:?}");
    assert!(unit.contains("ExecStart=/usr/bin/sinkhole run"), "{unit}");
    assert!(purged, "{purge_log}");
    assert!(!still_known, "dpkg still knows sinkhole after the purge");
    assert!(left.is_empty(), "left after the purge: {left:?}");
}
