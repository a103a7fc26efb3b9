//! The real daemon on a free loopback port with its own config and storage, and a raw SMTP
//! client for replaying exact bytes.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{TempDir, free_port, sinkhole_bin, temp_dir};

/// The TOML for a daemon on `127.0.0.1:port` with storage in `storage`; `smtp` and `storage`
/// are extra lines for those tables, `rest` more tables. XDP maps are pinned nowhere real (the
/// daemon falls back to its in-memory blocker). Unless `rest` configures `[dnsbl]`, scoring has
/// no zones and asks a closed loopback port, so no test sends a query beyond loopback. (The
/// resolver does not act on the port-unreachable errors: each lookup is unanswered until
/// `dnsbl.timeout`, and a closed session's log line waits for that. Tests that need answers
/// use [`dns_without_zones`] with a real server.)
pub fn smtp_config(
    port: u16,
    storage: &Path,
    smtp: &str,
    storage_extra: &str,
    rest: &str,
) -> String {
    let dnsbl = if rest.contains("[dnsbl") {
        String::new()
    } else {
        format!(
            "[dnsbl]\nnameservers = [\"127.0.0.1:{}\"]\nzone = []\n",
            closed_udp_port()
        )
    };
    format!(
        "[smtp]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"sinkhole.test\"\n{smtp}\n\
         [storage]\ndir = \"{}\"\n{storage_extra}\n\
         [xdp]\npin_dir = \"{}\"\n\
         {dnsbl}{rest}\n",
        storage.join("data").display(),
        storage.join("no-bpffs").display(),
    )
}

/// A loopback UDP port nothing listens on (queries to it fail with port unreachable).
fn closed_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0/udp");
    socket.local_addr().expect("local_addr").port()
}

/// The `[dnsbl]` table for a daemon that sends every lookup (PTR, forward, HELO) to `nameserver`
/// and queries no DNSBL zone: scoring answers fast and only with what that server holds.
pub fn dns_without_zones(nameserver: SocketAddr) -> String {
    format!("[dnsbl]\nnameservers = [\"{nameserver}\"]\nzone = []\n")
}

/// A running `sinkhole run`, killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    /// Holds the config, the storage and the daemon's stderr.
    pub dir: TempDir,
}

impl Daemon {
    /// Starts a daemon on a free loopback port with [`smtp_config`]'s extra lines, and waits
    /// until it says it listens.
    pub fn start(smtp: &str, storage: &str) -> Daemon {
        Daemon::start_with_tables(smtp, storage, "")
    }

    /// Like [`Daemon::start`], with `rest` as more tables (`[policy]`, `[dnsbl]`, ...).
    pub fn start_with_tables(smtp: &str, storage: &str, rest: &str) -> Daemon {
        let dir = temp_dir("daemon");
        let port = free_port();
        let config = smtp_config(port, dir.path(), smtp, storage, rest);
        Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Starts a daemon with a complete config (written into `dir`), listening on `addr`.
    pub fn start_with_config(dir: TempDir, config: &str, addr: SocketAddr) -> Daemon {
        fs::write(dir.path().join("sinkhole.toml"), config).expect("write config");
        let child = spawn(dir.path());
        let mut daemon = Daemon { child, addr, dir };
        daemon.wait_listening();
        daemon
    }

    /// Waits until the daemon says it listens on its address.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .stderr()
            .contains(&format!("listening on {}", self.addr))
        {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sinkhole exited with {status}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "sinkhole did not start: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (a crash: nothing is written out) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the daemon if it runs and starts it again on the same config and storage (its
    /// stderr log starts afresh).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.dir.path());
        self.wait_listening();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Like [`Daemon::start_with_tables`], but `xdp.allow` leaves IPv4 loopback out (the default
    /// allows it), so loopback clients can be blocked, in the in-memory blocker.
    pub fn start_blocking_loopback(rest: &str) -> Daemon {
        let dir = temp_dir("daemon");
        let port = free_port();
        let config = smtp_config(port, dir.path(), "", "", rest).replacen(
            "[xdp]\n",
            "[xdp]\nallow = [\"::1/128\"]\n",
            1,
        );
        Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The config file the daemon runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sinkhole.toml")
    }

    /// `STORAGE`.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the daemon logged so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits (bounded by `limit`) until the daemon's stderr contains `needle`; panics with
    /// what it logged if it does not, or if the daemon exits first.
    pub fn wait_stderr(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let stderr = self.stderr();
            if stderr.contains(needle) {
                return stderr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sinkhole exited with {status} before logging `{needle}`: {stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "sinkhole did not log `{needle}` within {limit:?}: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics unless the daemon is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for sinkhole") {
            panic!("sinkhole exited with {status}: {}", self.stderr());
        }
    }

    /// Sends SIGHUP (reload the policy file).
    pub fn reload(&self) {
        self.signal("-HUP");
    }

    /// `sinkhole campaigns --config CONFIG --json`, parsed.
    pub fn campaigns(&self) -> serde_json::Value {
        let out = Command::new(sinkhole_bin())
            .arg("campaigns")
            .arg("--config")
            .arg(self.config_path())
            .arg("--json")
            .output()
            .expect("run sinkhole campaigns");
        assert!(
            out.status.success(),
            "sinkhole campaigns exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "campaigns --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Files in `STORAGE/maildir/new`, sorted by name.
    pub fn new_messages(&self) -> Vec<PathBuf> {
        files_in(&self.storage().join("maildir/new"))
    }

    /// Every line of `STORAGE/sessions.jsonl`, parsed.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.storage().join("sessions.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
            .collect()
    }

    /// Waits (bounded) until the session log holds at least `n` lines (it is written out at
    /// least every second), and returns them.
    pub fn wait_sessions(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sessions = self.sessions();
            if sessions.len() >= n || Instant::now() > deadline {
                return sessions;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// `kill SIGNAL PID`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the daemon to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sinkhole") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sinkhole did not exit: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; panics unless it exits 0 within 15 s.
    pub fn stop(&mut self) {
        self.terminate();
        let status = self.wait(Duration::from_secs(15));
        assert!(
            status.success(),
            "sinkhole exited with {status}: {}",
            self.stderr()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `addr` from the local address `source`, given up after `timeout`.
pub fn connect_from(
    addr: SocketAddr,
    source: IpAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// `sinkhole run --config DIR/sinkhole.toml`, stderr into `DIR/stderr.log`.
fn spawn(dir: &Path) -> Child {
    let stderr = fs::File::create(dir.join("stderr.log")).expect("stderr file");
    Command::new(sinkhole_bin())
        .arg("run")
        .arg("--config")
        .arg(dir.join("sinkhole.toml"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sinkhole run")
}

/// Regular files in `dir`, sorted; empty when `dir` does not exist.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A plain SMTP client over a socket, for replaying exact bytes and reading the replies.
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
}

impl SmtpClient {
    /// Connects with a 10 s read timeout (no test waits longer for a reply).
    pub fn connect(addr: SocketAddr) -> SmtpClient {
        SmtpClient::from_stream(TcpStream::connect(addr).expect("connect to sinkhole"))
    }

    /// Connects from the local address `source` (e.g. `127.0.0.7`, so the daemon sees a
    /// client of its own on loopback).
    pub fn connect_from(addr: SocketAddr, source: IpAddr) -> SmtpClient {
        SmtpClient::from_stream(
            connect_from(addr, source, Duration::from_secs(10)).expect("connect to sinkhole"),
        )
    }

    fn from_stream(stream: TcpStream) -> SmtpClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        SmtpClient {
            reader: BufReader::new(stream),
        }
    }

    /// MAIL (`a@example.com`), RCPT (`trap@example.org`) and DATA after EHLO, each answered as
    /// an accepted one: the client is at the start of a body.
    pub fn begin_data(&mut self) {
        self.send(b"MAIL FROM:<a@example.com>\r\n");
        assert_eq!(self.reply(), ["250 2.1.0 Ok"]);
        self.send(b"RCPT TO:<trap@example.org>\r\n");
        assert_eq!(self.reply(), ["250 2.1.5 Ok"]);
        self.send(b"DATA\r\n");
        assert!(self.reply()[0].starts_with("354 "));
    }

    /// One message (`a@example.com` to `trap@example.org`, a `Subject: t` header and `body`)
    /// after EHLO, each step checked as the daemon answers an accepted one; returns the reply
    /// to the end of data.
    pub fn transaction(&mut self, body: &str) -> String {
        self.begin_data();
        self.send(format!("Subject: t\r\n\r\n{body}\r\n.\r\n").as_bytes());
        self.reply().remove(0)
    }

    /// The next `n` whole replies.
    pub fn replies(&mut self, n: usize) -> Vec<Vec<String>> {
        (0..n).map(|_| self.reply()).collect()
    }

    /// The socket, e.g. to check that nothing has arrived yet.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends `bytes` in one write.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write to sinkhole");
    }

    /// One reply line, without CRLF; `None` at end of stream.
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// One whole reply (all lines of a multi-line reply).
    pub fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().expect("a reply, not the end of the stream");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// True when the server closed the connection (after any remaining bytes are read): an end
    /// of stream, or a reset (a server that closes with input of ours unread sends RST).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// What follows the prepended headers of a stored message (the last is `X-Sinkhole-Dnsbl`).
pub fn stored_body(file: &[u8]) -> &[u8] {
    let marker = b"\nX-Sinkhole-Dnsbl: ";
    let at = file
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the prepended X-Sinkhole-Dnsbl header");
    let rest = &file[at + marker.len()..];
    let end = rest.iter().position(|&b| b == b'\n').unwrap();
    &rest[end + 1..]
}

/// `bytes` as a message is stored: each CRLF as LF, every other byte as it is.
pub fn lf_endings(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// Clients that connect to one address one after another, each for a whole session (banner,
/// `QUIT`, `221`), until stopped, counting the sessions tried and those that failed (refused,
/// cut, or answered wrong): what a no-gap replacement of the daemon must never fail.
#[derive(Default)]
pub struct Prober {
    stop: std::sync::atomic::AtomicBool,
    tried: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Prober {
    /// Runs sessions against `addr` until [`Prober::stop`]; each failure is said on stderr.
    pub fn run(&self, addr: SocketAddr) {
        use std::sync::atomic::Ordering::Relaxed;
        while !self.stop.load(Relaxed) {
            self.tried.fetch_add(1, Relaxed);
            if let Err(e) = whole_session(addr) {
                self.failed.fetch_add(1, Relaxed);
                eprintln!("a session to {addr} failed: {e}");
            }
        }
    }

    /// Ends [`Prober::run`] after its current session.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sessions tried and sessions failed so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.tried.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// One session: connect, read the banner, `QUIT`, read the `221`.
fn whole_session(addr: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    let (mut banner, mut bye) = (String::new(), String::new());
    reader
        .read_line(&mut banner)
        .map_err(|e| format!("reading the banner: {e}"))?;
    (&stream)
        .write_all(b"QUIT\r\n")
        .map_err(|e| format!("{banner:?} then sending QUIT: {e}"))?;
    reader
        .read_line(&mut bye)
        .map_err(|e| format!("{banner:?} then reading the reply to QUIT: {e}"))?;
    match banner.starts_with("220 ") && bye.starts_with("221 ") {
        true => Ok(()),
        false => Err(format!("{banner:?} then {bye:?}")),
    }
}
