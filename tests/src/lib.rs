//! Shared harness for the integration tests: the real `sinkhole` binary, child processes that
//! die with the test, free ports, network namespaces that clean up after themselves, and the
//! privilege rule for kernel tests. Topic modules: `daemon` (the SMTP daemon and a raw client),
//! `dns` (real DNS servers), `netns` (namespaces, veth, bpffs), `frames` and `xdp` (test runs),
//! `null_smtp` (the benchmarks' do-nothing SMTP server), `policy` (a daemon with a policy
//! file), `systemd` (a real systemd booted in namespaces of its own).

pub mod daemon;
pub mod dns;
pub mod frames;
pub mod netns;
pub mod null_smtp;
pub mod policy;
pub mod replay;
pub mod slow_disk;
pub mod systemd;
pub mod xdp;

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Whether a kernel test may run: true as root. Otherwise it [`skip`]s and returns false.
pub fn kernel_tests_allowed(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root (CAP_BPF, CAP_NET_ADMIN)");
    false
}

/// Says why `test` skips, which the caller then does; under `CI=true`, where nothing may
/// skip, fails it instead.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: {why}");
}

/// Which tests may run beside which in the one test process: [`exclusive`] for the tests that
/// load the whole machine, [`shared`] for the tests that assert on wall-clock bounds. Others
/// take neither and run beside anything.
static MACHINE: RwLock<()> = RwLock::new(());

/// Held for the whole of a test that loads the machine (thousands of connections, a gigabyte
/// through loopback): it runs when no [`shared`] holder runs, and they wait for it.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// Held for the whole of a test that asserts on wall-clock bounds (a timeout kept, an answer
/// within a deadline), so that no [`exclusive`] test loads the machine meanwhile; any number
/// of these run side by side.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// A name unique to this test process and `tag`, short enough for interfaces (15 bytes) when
/// `tag` is at most 4 characters.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("sh{tag}{}x{n}", std::process::id() % 100_000)
}

/// The `sinkhole` binary under test: `$SINKHOLE_BIN` if set (as `cargo xtask test` does), else
/// this workspace's build, brought up to date once per test process so no test runs a stale one.
pub fn sinkhole_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SINKHOLE_BIN") {
            return PathBuf::from(bin);
        }
        // target/PROFILE/deps/TEST -> target/PROFILE/sinkhole
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/PROFILE/deps");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "sinkhole-user",
            "--bin",
            "sinkhole",
        ]);
        // Benchmarks run from target/release: they measure (and so build) the release binary.
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build of the sinkhole binary");
        assert!(
            status.success(),
            "cargo build of the sinkhole binary failed"
        );
        dir.join("sinkhole")
    })
}

/// A temporary directory, removed with its contents when dropped.
pub type TempDir = tempfile::TempDir;

/// A new temporary directory named after `tag`.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("sinkhole-{tag}-"))
        .tempdir()
        .expect("create a temp dir")
}

/// The drop counter of the block on `prefix` (as `list --json` spells it, e.g. `198.51.100.2/32`)
/// in the pinned maps of `config`.
pub fn entry_drops(config: &Path, prefix: &str) -> u64 {
    let config = config.to_str().expect("UTF-8 config path");
    let text = sinkhole_ok(&["list", "--json", "--config", config]).expect("sinkhole list");
    let list: serde_json::Value = serde_json::from_str(&text).expect("list --json is JSON");
    list.as_array()
        .expect("an array")
        .iter()
        .find(|e| e["prefix"] == prefix)
        .unwrap_or_else(|| panic!("{prefix} not in {list}"))["drops"]
        .as_u64()
        .expect("drops is a number")
}

/// Runs `sinkhole ARGS` to completion.
pub fn sinkhole(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(sinkhole_bin())
        .args(args)
        .output()
        .context("run sinkhole")
}

/// Runs `sinkhole ARGS`, failing unless it exits 0; returns its stdout.
pub fn sinkhole_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = sinkhole(args)?;
    if !out.status.success() {
        bail!(
            "sinkhole {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A loopback port free for both TCP and UDP right now (bind it soon).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0/udp");
        let port = udp.local_addr().expect("local_addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP")
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped when the guard drops.
pub struct ChildGuard {
    child: Child,
    /// Everything the child wrote on stderr so far, line by line.
    stderr: mpsc::Receiver<String>,
}

impl ChildGuard {
    /// Spawns `command` with stderr captured.
    pub fn spawn(mut command: Command) -> anyhow::Result<ChildGuard> {
        let mut child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {command:?}"))?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[child] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildGuard { child, stderr: rx })
    }

    /// Waits until the child writes a stderr line containing `needle`; fails if it exits or
    /// `timeout` passes first.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(()),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no `{needle}` from the child within {timeout:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("the child exited ({status}) before saying `{needle}`")
                }
            }
        }
    }

    /// The stderr lines the child writes within `period` from now.
    pub fn stderr_for(&mut self, period: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + period;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            lines.push(line);
        }
        lines
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{:?} exited: {status}", self.child.id());
        }
        Ok(())
    }

    /// Stops the child now (SIGTERM, then SIGKILL after a second) and reaps it.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_term();
            for _ in 0..50 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal_term();
        Ok(self.child.wait()?)
    }

    fn signal_term(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether process `pid` runs: `/proc/PID` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.starts_with(" Z"))
    })
}

/// Runs a command to completion, failing with its stderr when it does not exit 0.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The resident set size of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The peak resident set size of process `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// A non-blocking TCP socket bound to `from` (any port) with a connect to `to` under way: many
/// clients from several loopback addresses, without waiting for each handshake.
pub fn start_connect_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(std::net::SocketAddr::new(from, 0)))?;
    match socket.connect(&SockAddr::from(to)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Runs a client program (swaks, a Python script) to completion and fails the test, with what
/// it printed, unless it exited 0.
pub fn run_client(command: &mut std::process::Command) -> std::process::Output {
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "run {:?} (installed by cargo xtask setup): {e}",
            command.get_program()
        )
    });
    assert!(
        output.status.success(),
        "{:?} failed: {}{}",
        command.get_program(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The sessions `sinkhole campaigns --storage STORAGE` read, in campaigns or not (from the
/// table's first line, `N campaigns, M sessions (U in no campaign)`), and its stderr.
pub fn sessions_read(storage: &Path) -> (u64, String) {
    let out = sinkhole(&[
        "campaigns",
        "--storage",
        storage.to_str().expect("a UTF-8 path"),
    ])
    .expect("run sinkhole campaigns");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let sessions = table
        .lines()
        .next()
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no session count in {table}"));
    (sessions, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// xorshift64*: a small, fast generator, reproducible from its seed (the crash test prints
/// its own; the benchmarks use fixed ones).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
