//! Under a service manager (`Type=notify`; here a harness that implements its notification
//! socket, as this machine runs no systemd): `READY=1` with the daemon's pid once it serves,
//! `RELOADING=1`/`READY=1` around SIGHUP, a reload (`sinkhole run --takeover --background`, the
//! unit's `ExecReload=`) that hands the main pid to the new daemon with no gap for connecting
//! clients, lets a session open at the old one go on to its end there, and brings no
//! `STOPPING=1` from the old one; and `STOPPING=1` when the main one stops.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Prober, SmtpClient, smtp_config};
use sinkhole_tests::{ChildGuard, alive, free_port, sinkhole_bin, temp_dir};

/// The service manager's side: a datagram socket the daemons send their states to.
struct Manager {
    socket: UnixDatagram,
}

impl Manager {
    /// The next state sent within `limit`, if any.
    fn next(&self, limit: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits (at most 20 s) for a state containing every one of `lines`; returns the states
    /// seen before it.
    fn expect(&self, lines: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut before = Vec::new();
        while let Some(state) = self.next(deadline.saturating_duration_since(Instant::now())) {
            if lines.iter().all(|l| state.lines().any(|s| s == *l)) {
                return before;
            }
            before.push(state);
        }
        panic!("no state with {lines:?}; got {before:?}");
    }
}

#[test]
fn the_service_manager_hears_ready_reloading_the_new_main_pid_and_stopping() {
    let dir = temp_dir("notify");
    let socket_path = dir.path().join("notify.sock");
    let manager = Manager {
        socket: UnixDatagram::bind(&socket_path).unwrap(),
    };
    let port = free_port();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    let config = dir.path().join("sinkhole.toml");
    std::fs::write(
        &config,
        smtp_config(
            port,
            dir.path(),
            "",
            "",
            &format!("[policy]\nfile = \"{}\"\n", policy.display()),
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let mut old = Command::new(sinkhole_bin());
    old.args(["run", "--config", cfg])
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &socket_path);
    let mut old = ChildGuard::spawn(old).unwrap();
    let old_pid = old.pid();
    manager.expect(&["READY=1", &format!("MAINPID={old_pid}")]);
    assert!(TcpStream::connect(addr).is_ok(), "serving once READY=1");

    // SIGHUP: reloading, then ready again.
    assert!(
        Command::new("kill")
            .args(["-HUP", &old_pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    manager.expect(&["RELOADING=1"]);
    manager.expect(&["READY=1"]);

    // A session open at the old daemon when the reload starts...
    let mut open = SmtpClient::connect(addr);
    assert!(open.reply()[0].starts_with("220 "));
    open.send(b"EHLO client.example\r\n");
    assert!(open.reply().last().unwrap().starts_with("250 "));

    // A client connecting throughout the reload is never refused.
    let prober = Prober::default();
    let new_pid = std::thread::scope(|scope| {
        scope.spawn(|| prober.run(addr));
        // What the unit's ExecReload= runs: it returns once the new daemon serves.
        let log = std::fs::File::create(dir.path().join("reload.log")).unwrap();
        let reload = Command::new(sinkhole_bin())
            .args(["run", "--takeover", "--background", "--config", cfg])
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        let said = std::fs::read_to_string(dir.path().join("reload.log")).unwrap();
        assert!(reload.success(), "{said}");
        let new_pid: u32 = said
            .lines()
            .find_map(|l| {
                l.strip_prefix("sinkhole (pid ")?
                    .split(')')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no pid in {said}"));
        assert_ne!(new_pid, old_pid);
        // The new daemon names itself the main process; the old one then stops quietly.
        let before = manager.expect(&["READY=1", &format!("MAINPID={new_pid}")]);
        assert!(
            before.iter().all(|s| !s.contains("STOPPING=1")),
            "{before:?}"
        );
        // ...goes on there to its end (the old daemon stops listening, not talking).
        assert!(
            open.transaction("sent across a takeover")
                .starts_with("250 ")
        );
        open.send(b"QUIT\r\n");
        assert!(open.reply()[0].starts_with("221 "));
        let deadline = Instant::now() + Duration::from_secs(20);
        while old.check_running().is_ok() {
            assert!(Instant::now() < deadline, "the old daemon still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        prober.stop();
        new_pid
    });
    let quiet = manager.next(Duration::from_millis(500));
    assert!(
        quiet.as_ref().is_none_or(|s| !s.contains("STOPPING=1")),
        "the old daemon told the service manager it stops: {quiet:?}"
    );
    let (tried, failed) = prober.counts();
    assert!(tried >= 20, "only {tried} connections tried");
    assert_eq!(failed, 0, "of {tried} connections");

    // The main process stops: STOPPING=1.
    assert!(
        Command::new("kill")
            .arg(new_pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    manager.expect(&["STOPPING=1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(new_pid) {
        assert!(Instant::now() < deadline, "the new daemon still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}
