//! Shared harness for the integration tests: the real `sinkhole` binary, child processes that
//! die with the test, free ports, network namespaces that clean up after themselves, and the
//! privilege rule for kernel tests.

pub mod frames;
pub mod xdp;

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Whether a kernel test may run: true as root. Otherwise it prints why it skips and returns
/// false, except under `CI=true`, where a missing privilege fails the test.
pub fn kernel_tests_allowed(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (CAP_BPF, CAP_NET_ADMIN) and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root (CAP_BPF, CAP_NET_ADMIN)");
    false
}

/// A name unique to this test process and `tag`, short enough for interfaces (15 bytes) when
/// `tag` is at most 4 characters.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("sh{tag}{}x{n}", std::process::id() % 100_000)
}

/// The `sinkhole` binary, built (once per test process) from this workspace.
pub fn sinkhole_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "sinkhole-user",
                "--bin",
                "sinkhole",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build of the sinkhole binary");
        assert!(
            status.success(),
            "cargo build of the sinkhole binary failed"
        );
        // target/PROFILE/deps/TEST -> target/PROFILE/sinkhole
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/PROFILE/deps");
        dir.join("sinkhole")
    })
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

/// A free TCP port on loopback (free when asked; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
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

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal_term();
        Ok(self.child.wait()?)
    }

    fn signal_term(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
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
}

/// A network namespace (`ip netns add`), deleted with everything in it when dropped.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> anyhow::Result<NetNs> {
        let name = unique_name(tag);
        run("ip", &["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs inside the namespace and still sees the host's bpffs (`ip netns
    /// exec` remounts /sys and would hide it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens live there (and
    /// keep working when handed back to other threads).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = std::fs::File::open(self.path())?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `file` is an open netns file; setns only affects this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error()).context("setns");
                    }
                    Ok(f())
                })
                .join()
                .expect("namespace thread panicked")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair: `near` holds `near_if`, `far` holds `far_if`, both up,
/// with the given addresses (CIDR notation; IPv6 without duplicate address detection).
pub struct VethPair {
    pub near: NetNs,
    pub far: NetNs,
    pub near_if: String,
    pub far_if: String,
}

impl VethPair {
    pub fn new(near_addrs: &[&str], far_addrs: &[&str]) -> anyhow::Result<VethPair> {
        let near = NetNs::new("n")?;
        let far = NetNs::new("f")?;
        let near_if = unique_name("v");
        let far_if = unique_name("w");
        near.ip(&[
            "link",
            "add",
            &near_if,
            "type",
            "veth",
            "peer",
            "name",
            &far_if,
            "netns",
            far.name(),
        ])?;
        for (ns, dev, addrs) in [(&near, &near_if, near_addrs), (&far, &far_if, far_addrs)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(VethPair {
            near,
            far,
            near_if,
            far_if,
        })
    }
}

/// Starts the real daemon inside `ns` with `config` (XDP on the configured interfaces, maps in
/// the host bpffs) and waits until its XDP program is attached. Until `sinkhole run` exists,
/// this is the hidden `sinkhole attach` (the XDP part of `run`); switch the subcommand then.
pub fn spawn_xdp_daemon(ns: &NetNs, config: &Path) -> anyhow::Result<ChildGuard> {
    let mut command = ns.command(sinkhole_bin());
    command.arg("attach").arg("--config").arg(config);
    command.env("RUST_LOG", "info");
    let mut daemon = ChildGuard::spawn(command)?;
    daemon.wait_for_stderr("XDP program attached", Duration::from_secs(20))?;
    Ok(daemon)
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

/// A pin directory under the host bpffs for one test, removed (pins and all) when dropped.
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        PinDir(Path::new("/sys/fs/bpf").join(unique_name(tag)))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
