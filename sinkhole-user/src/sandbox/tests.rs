//! The daemon's own confinement, applied in a child process that then tries what the daemon
//! must never do.

use std::fs::{self, File};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;

use super::*;

const CHILD: &str = "SINKHOLE_SANDBOX_CHILD";

/// Prints what `attempt` gave: `ok` or the errno.
fn report(what: &str, attempt: io::Result<()>) {
    match attempt {
        Ok(()) => println!("{what}: ok"),
        Err(e) => println!("{what}: errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

/// Runs in a fresh process (see `the_confined_daemon_cannot_exec_trace_connect_or_open`):
/// confines itself exactly as the daemon does, with its storage in `$SINKHOLE_SANDBOX_CHILD`.
#[test]
fn child_confined_like_the_daemon() {
    let Some(storage) = std::env::var_os(CHILD) else {
        return;
    };
    let storage = PathBuf::from(storage);
    // A TCP service on a port that is not DNS's.
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = Config::default();
    config.storage.dir = storage.clone();
    let enforced = confine(&daemon_reach(&config, None, false)).unwrap();
    // After the test harness's `test NAME ... ` on a line of its own.
    println!("\nlandlock: {enforced:?}");
    report("execve", Command::new("/bin/true").status().map(drop));
    report(
        "ptrace",
        nix::sys::ptrace::traceme().map_err(io::Error::from),
    );
    report(
        "connect",
        TcpStream::connect(service.local_addr().unwrap()).map(drop),
    );
    report("unix socket", UnixDatagram::unbound().map(drop));
    report("open outside", File::open("/etc/passwd").map(drop));
    report("write storage", fs::write(storage.join("message"), b"kept"));
    report("resolver file", File::open("/etc/resolv.conf").map(drop));
}

#[test]
fn the_confined_daemon_cannot_exec_trace_connect_or_open() {
    let storage = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::child_confined_like_the_daemon",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, storage.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(what)?.strip_prefix(": "))
            .unwrap_or_else(|| panic!("no `{what}` in {stdout}"))
            .to_string()
    };
    let eperm = format!("errno {}", libc::EPERM);
    let eacces = format!("errno {}", libc::EACCES);
    assert_eq!(outcome("landlock"), "Fully", "{stdout}");
    // seccomp: not on the list.
    assert_eq!(outcome("execve"), eperm, "{stdout}");
    assert_eq!(outcome("ptrace"), eperm, "{stdout}");
    assert_eq!(outcome("unix socket"), eperm, "{stdout}");
    // Landlock: a TCP port that is not DNS's, a file outside its reach.
    assert_eq!(outcome("connect"), eacces, "{stdout}");
    assert_eq!(outcome("open outside"), eacces, "{stdout}");
    // What the daemon needs still works.
    assert_eq!(outcome("write storage"), "ok", "{stdout}");
    assert_eq!(
        fs::read(storage.path().join("message")).unwrap(),
        b"kept",
        "{stdout}"
    );
    if std::path::Path::new("/etc/resolv.conf").exists() {
        assert_eq!(outcome("resolver file"), "ok", "{stdout}");
    }
}
