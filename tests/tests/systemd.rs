//! The packaged unit under a real systemd (booted as PID 1 of namespaces the test creates, as
//! this machine's own PID 1 is not systemd), with only its paths changed: `systemctl start`
//! returns once the daemon serves (`Type=notify`), `systemctl reload` replaces the daemon with
//! no gap for connecting clients and systemd follows the new main pid, and `systemctl stop`
//! stops it.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use sinkhole_tests::daemon::{Prober, smtp_config};
use sinkhole_tests::systemd::{SYSTEMD, Systemd};
use sinkhole_tests::{alive, free_port, kernel_tests_allowed, sinkhole_bin, skip};

const UNIT: &str = "sinkhole.service";

/// `packaging/sinkhole.service` with the binary, the config and the storage at `dir`.
fn unit_at(dir: &Path) -> anyhow::Result<String> {
    let mut unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sinkhole.service"),
    )?;
    // The storage first: `dir` itself starts with /var/lib/sinkhole.
    for (installed, here) in [
        ("/var/lib/sinkhole", dir.to_path_buf()),
        ("/usr/local/bin/sinkhole", dir.join("sinkhole")),
        ("/etc/sinkhole/sinkhole.toml", dir.join("sinkhole.toml")),
    ] {
        ensure!(
            unit.contains(installed),
            "the unit no longer names {installed}"
        );
        unit = unit.replace(installed, &here.display().to_string());
    }
    Ok(unit)
}

/// The daemon's main pid under `systemd`, waiting (at most 20 s) until it is not `old` and
/// `old` has exited.
fn new_main_pid(systemd: &Systemd, old: u32) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let main = systemd.main_pid(UNIT)?;
        if let Some(main) = main.filter(|&pid| pid != old && !alive(old)) {
            return Ok(main);
        }
        ensure!(
            Instant::now() < deadline,
            "after the reload the main pid is {main:?} and pid {old} runs: {}",
            alive(old)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn systemd_starts_reloads_with_a_new_main_pid_and_stops_the_packaged_unit() -> anyhow::Result<()> {
    const TEST: &str = "systemd";
    if !Path::new(SYSTEMD).exists() {
        skip(
            TEST,
            "systemd is not installed (`cargo xtask setup` installs it)",
        );
        return Ok(());
    }
    if !kernel_tests_allowed(TEST) {
        return Ok(());
    }
    // Not under /tmp: the unit's PrivateTmp= gives the daemon a /tmp of its own.
    let dir = tempfile::Builder::new()
        .prefix("sinkhole-systemd-")
        .tempdir_in("/var/lib")?;
    std::fs::copy(sinkhole_bin(), dir.path().join("sinkhole"))?;
    let port = free_port();
    std::fs::write(
        dir.path().join("sinkhole.toml"),
        smtp_config(port, dir.path(), "", "", ""),
    )?;
    let units = dir.path().join("units");
    std::fs::create_dir_all(units.join(format!("{UNIT}.d")))?;
    std::fs::write(units.join(UNIT), unit_at(dir.path())?)?;
    // Where a host has journald, the daemon's log goes there; here, to a file.
    std::fs::write(
        units.join(format!("{UNIT}.d/test.conf")),
        format!(
            "[Service]\nEnvironment=RUST_LOG=info\nStandardOutput=append:{}\nStandardError=inherit\n",
            dir.path().join("daemon.log").display()
        ),
    )?;

    let systemd = Systemd::boot(&units, dir.path())?;
    // What the unit's status and the daemons' log say, when something fails.
    let diagnosis = || {
        let status = systemd.systemctl(&["status", "--no-pager", "--full", UNIT]);
        format!(
            "{}\nthe daemons said:\n{}\nsystemd said:\n{}",
            status.map_or_else(
                |e| e.to_string(),
                |s| String::from_utf8_lossy(&s.stdout).into_owned()
            ),
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default(),
            systemd.log()
        )
    };
    // Type=notify: `start` returns once the daemon said READY=1, so it serves now.
    systemd
        .systemctl_ok(&["start", UNIT])
        .with_context(diagnosis)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect(addr).with_context(|| {
        format!(
            "`systemctl start` returned but nothing serves\n{}",
            diagnosis()
        )
    })?;
    let first = systemd.main_pid(UNIT)?.context("no main pid after start")?;
    ensure!(systemd.property(UNIT, "StatusText")? == "serving");

    // `systemctl reload` (ExecReload=: `sinkhole run --takeover --background`) while clients
    // connect one after another.
    let prober = Prober::default();
    let second = std::thread::scope(|scope| {
        scope.spawn(|| prober.run(addr));
        std::thread::sleep(Duration::from_millis(200));
        let reloaded = systemd
            .systemctl_ok(&["reload", UNIT])
            .and_then(|_| new_main_pid(&systemd, first));
        std::thread::sleep(Duration::from_millis(300));
        prober.stop();
        reloaded
    })
    .with_context(diagnosis)?;
    let (tried, failed) = prober.counts();
    ensure!(tried >= 20, "only {tried} sessions tried");
    ensure!(
        failed == 0,
        "{failed} of {tried} sessions failed during the reload"
    );
    ensure!(
        std::fs::read_to_string(format!("/proc/{second}/cmdline"))?.contains("--takeover"),
        "the main process is not the daemon the reload started"
    );
    ensure!(systemd.property(UNIT, "ActiveState")? == "active");
    ensure!(systemd.property(UNIT, "SubState")? == "running");
    ensure!(systemd.property(UNIT, "NRestarts")? == "0");

    // `systemctl stop` stops the new main process, and with it the service.
    systemd
        .systemctl_ok(&["stop", UNIT])
        .with_context(diagnosis)?;
    ensure!(!alive(second), "pid {second} runs after `systemctl stop`");
    let (state, result) = (
        systemd.property(UNIT, "ActiveState")?,
        systemd.property(UNIT, "Result")?,
    );
    ensure!(
        state == "inactive" && result == "success",
        "{state} ({result}) after `systemctl stop`:\n{}",
        diagnosis()
    );
    ensure!(
        TcpStream::connect(addr).is_err(),
        "something still serves {addr}"
    );
    Ok(())
}
