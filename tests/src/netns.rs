//! Network namespaces and veth pairs the kernel tests create (and always delete), bpffs pin
//! directories, and the daemon started inside a namespace.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::{ChildGuard, run, sinkhole_bin, unique_name};

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
                    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
                    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                        .context("setns")?;
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

/// Starts the real daemon (`sinkhole run`) inside `ns` with `config` (XDP on the configured
/// interfaces, maps in the host bpffs; its `smtp.listen` and `storage.dir` must work inside
/// `ns`) and waits until its XDP program is attached and it listens.
pub fn spawn_xdp_daemon(ns: &NetNs, config: &Path) -> anyhow::Result<ChildGuard> {
    spawn_xdp_daemon_logging(ns, config, "info")
}

/// [`spawn_xdp_daemon`] with these `RUST_LOG` directives.
pub fn spawn_xdp_daemon_logging(
    ns: &NetNs,
    config: &Path,
    rust_log: &str,
) -> anyhow::Result<ChildGuard> {
    let mut command = ns.command(sinkhole_bin());
    command.arg("run").arg("--config").arg(config);
    command.env("RUST_LOG", rust_log);
    let mut daemon = ChildGuard::spawn(command)?;
    daemon.wait_for_stderr("XDP program attached", Duration::from_secs(20))?;
    daemon.wait_for_stderr("listening on", Duration::from_secs(20))?;
    Ok(daemon)
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
