//! Updating a running daemon (`sinkhole run --takeover`, what `cargo xtask update` starts):
//! a blocked client flooding the SMTP port from the start to the end of the update never gets
//! a connection, the interface never goes without an XDP program while its program id changes
//! (the new daemon's program swapped into the pinned link), and a good client's mail is
//! accepted before and after.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{SmtpClient, connect_from};
use sinkhole_tests::netns::{NetNs, PinDir, VethPair, spawn_xdp_daemon};
use sinkhole_tests::{
    ChildGuard, entry_drops, free_port, kernel_tests_allowed, sinkhole_bin, sinkhole_ok,
};

const SERVER: &str = "198.51.100.1";
const BLOCKED: &str = "198.51.100.2";
const GOOD: &str = "198.51.100.3";

/// The id of the XDP program on `interface` in `ns`, if one is attached.
fn xdp_prog_id(ns: &NetNs, interface: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j", "link", "show", "dev", interface])
        .output()
        .expect("run ip");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    links[0]["xdp"]["prog"]["id"].as_u64()
}

/// One whole mail transaction from `source`; the reply to the end of DATA.
fn send_mail(ns: &NetNs, server: SocketAddr, source: IpAddr) -> String {
    ns.run_in(|| {
        let mut client = SmtpClient::connect_from(server, source);
        let greeting = client.reply();
        assert!(greeting[0].starts_with("220"), "{greeting:?}");
        client.send(b"EHLO good.example\r\n");
        client.reply();
        let done = client.transaction("hello");
        client.send(b"QUIT\r\n");
        done
    })
    .expect("enter the client namespace")
}

/// Waits until `daemon` has exited.
fn wait_exit(daemon: &mut ChildGuard, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while daemon.check_running().is_ok() {
        anyhow::ensure!(Instant::now() < deadline, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_takeover_lets_no_blocked_client_through_and_keeps_serving() -> anyhow::Result<()> {
    if !kernel_tests_allowed("a_takeover_lets_no_blocked_client_through_and_keeps_serving") {
        return Ok(());
    }
    let pair = VethPair::new(
        &[&format!("{SERVER}/24")],
        &[&format!("{BLOCKED}/24"), &format!("{GOOD}/24")],
    )?;
    let pins = PinDir::new("u");
    let storage = tempfile::tempdir()?;
    // Both daemons serve as `nobody`, confined: the folder above their storage lets it through.
    std::fs::set_permissions(storage.path(), std::fs::Permissions::from_mode(0o755))?;
    let port = free_port();
    let config = storage.path().join("sinkhole.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[smtp]
listen = ["{SERVER}:{port}"]
run_as = "nobody"
[storage]
dir = "{storage}"
[dnsbl]
nameservers = ["127.0.0.1:9"]
timeout = "300ms"
[xdp]
interfaces = ["{iface}"]
mode = "skb"
pin_dir = "{pins}"
[metrics]
listen = "127.0.0.1:0"
"#,
            storage = storage.path().join("data").display(),
            iface = pair.near_if,
            pins = pins.path().display(),
        ),
    )?;
    let cfg = config.to_str().unwrap();
    let server: SocketAddr = format!("{SERVER}:{port}").parse()?;
    let (blocked, good): (IpAddr, IpAddr) = (BLOCKED.parse()?, GOOD.parse()?);

    let mut old = spawn_xdp_daemon(&pair.near, &config)?;
    let old_prog = xdp_prog_id(&pair.near, &pair.near_if).expect("a program on the interface");
    sinkhole_ok(&["block", BLOCKED, "--reason", "update-test", "--config", cfg])?;
    assert!(send_mail(&pair.far, server, good).starts_with("250"));

    // A second daemon on the same storage without --takeover refuses to start.
    let refused = pair
        .near
        .command(sinkhole_bin())
        .args(["run", "--config", cfg])
        .output()?;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("already running as pid"), "{said}");
    assert_eq!(xdp_prog_id(&pair.near, &pair.near_if), Some(old_prog));

    let stop = AtomicBool::new(false);
    let (attempts, accepted) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut seen_progs = Vec::new();
    let mut absent = 0;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..2 {
            scope.spawn(|| {
                pair.far
                    .run_in(|| {
                        while !stop.load(Ordering::Relaxed) {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            if connect_from(server, blocked, Duration::from_millis(50)).is_ok() {
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                    .expect("enter the client namespace")
            });
        }
        let watcher = scope.spawn(|| {
            let (mut seen, mut absent) = (Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                match xdp_prog_id(&pair.near, &pair.near_if) {
                    Some(id) if seen.last() != Some(&id) => seen.push(id),
                    Some(_) => {}
                    None => absent += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (seen, absent)
        });

        let result = (|| {
            std::thread::sleep(Duration::from_millis(300));
            let mut command = pair.near.command(sinkhole_bin());
            command.args(["run", "--config", cfg, "--takeover"]);
            command.env("RUST_LOG", "info");
            let mut new = ChildGuard::spawn(command)?;
            new.wait_for_stderr("took over from pid", Duration::from_secs(20))?;
            old.wait_for_stderr("was replaced", Duration::from_secs(20))?;
            wait_exit(&mut old, Duration::from_secs(20))?;
            std::thread::sleep(Duration::from_millis(300));
            let after = send_mail(&pair.far, server, good);
            anyhow::ensure!(after.starts_with("250"), "after the update: {after}");
            Ok(new)
        })();
        stop.store(true, Ordering::Relaxed);
        (seen_progs, absent) = watcher.join().expect("watcher");
        let new = result?;
        let new_prog = xdp_prog_id(&pair.near, &pair.near_if);
        assert_ne!(new_prog, Some(old_prog), "the program was replaced");
        assert_eq!(seen_progs.first(), Some(&old_prog), "{seen_progs:?}");
        assert_eq!(seen_progs.last().copied(), new_prog, "{seen_progs:?}");
        // The new daemon's normal stop, with no privilege left, detaches its own program.
        assert!(new.terminate()?.success());
        assert_eq!(xdp_prog_id(&pair.near, &pair.near_if), None);
        assert!(!pins.path().join(format!("link_{}", pair.near_if)).exists());
        Ok(())
    })?;
    assert_eq!(
        absent, 0,
        "the interface was without a program {absent} time(s)"
    );
    assert_eq!(seen_progs.len(), 2, "{seen_progs:?}");
    let attempts = attempts.into_inner();
    assert!(attempts >= 10, "only {attempts} connects tried");
    assert_eq!(accepted.into_inner(), 0, "a blocked client got through");
    assert!(entry_drops(&config, &format!("{BLOCKED}/32")) >= attempts);
    Ok(())
}
