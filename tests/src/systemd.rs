//! A real systemd, booted as PID 1 of PID, mount, cgroup, UTS and IPC namespaces the test
//! creates (as a container manager boots it), for a machine whose own PID 1 is not systemd:
//! the units a test writes and no other, `systemctl` against it, and everything it started
//! killed with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::ChildGuard;

/// The service manager's binary.
pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// The target the namespace's systemd boots into: nothing but what a test starts.
const TARGET: &str = "sinkhole-test.target";

/// Empty stand-ins for the units a service's default dependencies and the packaged unit name
/// (none of the machine's own is there: [`UNIT_DIRS`]).
const STAND_INS: &[(&str, &str)] = &[
    (TARGET, "a test's empty system"),
    ("sysinit.target", "nothing to initialise"),
    ("basic.target", "nothing basic"),
    ("shutdown.target", "shutdown"),
    ("network-online.target", "the host's network, already up"),
    ("system.slice", "the services"),
];

/// Where systemd looks for units and generators: each gets an empty tmpfs in the namespace,
/// so that none of the machine's own units is loaded (sysinit.target's tmpfiles would empty
/// the host's /tmp, its sysctl and journald act on the host).
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/etc/systemd/system-generators",
    "/usr/local/lib/systemd/system",
    "/usr/local/lib/systemd/system-generators",
    "/usr/lib/systemd/system",
    "/usr/lib/systemd/system-generators",
    "/lib/systemd/system",
    "/lib/systemd/system-generators",
];

/// What runs as the namespace's PID 1 until it becomes systemd (`sh BOOT [cgroup]`; the `@NAME@`
/// are filled in by [`Systemd::boot`]). First
/// (PID and mount namespaces new): its pid as the host sees it, read before /proc is the
/// namespace's; a /proc, a /run, a /tmp and a /var/tmp of its own; no unit but the test's
/// (`@UNIT_DIRS@`); the pseudo-terminal `script` records as /dev/console (systemd writes its log
/// only to a terminal); into the cgroup `@CGROUP@`, made its root by a cgroup namespace. Then
/// (`cgroup`): a cgroup2 hierarchy of its own at /sys/fs/cgroup, on which systemd tracks its
/// services as on a host (with the machine's v1 hierarchies it would try to move the host's
/// processes), and systemd, told it runs in a container (it leaves the host's devices and
/// clock alone).
const BOOT: &str = r#"set -e
if [ "$1" != cgroup ]; then
    read -r pid _ < /proc/self/stat
    echo "$pid" > '@INIT_PID@'
    mount -t proc proc /proc
    mount -t tmpfs -o mode=755 tmpfs /run
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    mount -t tmpfs -o mode=1777 tmpfs /var/tmp
    for dir in @UNIT_DIRS@; do
        if [ -d "$dir" ]; then mount -t tmpfs -o mode=755 tmpfs "$dir"; fi
    done
    mkdir -p /run/systemd/system
    cp -r '@UNITS@'/. /run/systemd/system/
    mount --bind "$(tty)" /dev/console
    echo 0 > '@CGROUP@/cgroup.procs'
    exec unshare --cgroup -- sh "$0" cgroup
fi
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec env -i container=sinkhole-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    @SYSTEMD@ --system --unit=@TARGET@ --log-target=console --log-level=info --show-status=no \
    </dev/null >/dev/console 2>&1
"#;

/// A systemd booted in namespaces of its own; dropping it kills it and so every process in its
/// PID namespace, and removes its cgroup.
pub struct Systemd {
    /// `script`, which runs `unshare`, the parent of the namespace's PID 1, on a
    /// pseudo-terminal and records what is written to it.
    terminal: ChildGuard,
    /// The namespace's PID 1, as this process sees it.
    pid: u32,
    /// What `script` recorded: systemd's log (the terminal is `/dev/console` in its namespace).
    console: PathBuf,
    /// The cgroup (in the machine's cgroup2 hierarchy) that is the root of systemd's.
    cgroup: PathBuf,
}

impl Systemd {
    /// Boots systemd with the units in `units` (files, and `NAME.d/` drop-in directories)
    /// copied into `/run/systemd/system`, a tmpfs of its own; `work` holds its console log.
    /// Returns once `systemctl is-system-running` says it is up.
    pub fn boot(units: &Path, work: &Path) -> anyhow::Result<Systemd> {
        for (unit, what) in STAND_INS {
            std::fs::write(units.join(unit), format!("[Unit]\nDescription={what}\n"))?;
        }
        let cgroup = cgroup2_mount()?.join(crate::unique_name("sd"));
        std::fs::create_dir(&cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
        let console = work.join("console.log");
        let init_pid = work.join("init.pid");
        let boot = work.join("boot.sh");
        let script = BOOT
            .replace("@INIT_PID@", &init_pid.display().to_string())
            .replace("@UNIT_DIRS@", &UNIT_DIRS.join(" "))
            .replace("@UNITS@", &units.display().to_string())
            .replace("@CGROUP@", &cgroup.display().to_string())
            .replace("@SYSTEMD@", SYSTEMD)
            .replace("@TARGET@", TARGET);
        std::fs::write(&boot, script)?;
        let mut command = Command::new("script");
        command
            .args(["--quiet", "--flush", "--command"])
            .arg(format!(
                "unshare --pid --fork --mount --uts --ipc --propagation private --kill-child \
                 -- sh '{}'",
                boot.display()
            ))
            .arg(&console)
            .stdout(Stdio::null());
        let mut terminal = ChildGuard::spawn(command)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            terminal.check_running().context("booting systemd")?;
            if let Ok(pid) = std::fs::read_to_string(&init_pid)
                .unwrap_or_default()
                .trim()
                .parse()
            {
                break pid;
            }
            if Instant::now() > deadline {
                bail!("unshare started no namespace init");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let systemd = Systemd {
            terminal,
            pid,
            console,
            cgroup,
        };
        loop {
            let state = systemd.systemctl(&["is-system-running"])?;
            let state = String::from_utf8_lossy(&state.stdout);
            match state.trim() {
                "running" | "degraded" => return Ok(systemd),
                _ if Instant::now() > deadline => {
                    bail!(
                        "systemd is `{}` after 30 s; its log:\n{}",
                        state.trim(),
                        systemd.log()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs `systemctl ARGS` against this systemd (in its namespaces), whatever its status.
    pub fn systemctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-p", "systemctl"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("nsenter systemctl")
    }

    /// Runs `systemctl ARGS`, failing with what it said (and the unit's status) unless it
    /// exits 0; returns its stdout.
    pub fn systemctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.systemctl(args)?;
        if !out.status.success() {
            bail!(
                "systemctl {} failed: {}{}\nsystemd's log:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A property of a unit (`systemctl show -p NAME --value UNIT`).
    pub fn property(&self, unit: &str, name: &str) -> anyhow::Result<String> {
        self.systemctl_ok(&["show", "-p", name, "--value", unit])
    }

    /// The main pid of `unit` as this process sees it (systemd names it in its own PID
    /// namespace), or `None` when it has none.
    pub fn main_pid(&self, unit: &str) -> anyhow::Result<Option<u32>> {
        let inner: u32 = self.property(unit, "MainPID")?.parse()?;
        if inner == 0 {
            return Ok(None);
        }
        // NSpid: the pid in each namespace from this one inwards; find the process whose
        // innermost pid is `inner` among the namespace init's descendants.
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            let nspid: Vec<u32> = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|p| {
                    p.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if nspid.len() == 2 && nspid[1] == inner && self.in_namespace(nspid[0]) {
                return Ok(Some(nspid[0]));
            }
        }
        bail!("no process is pid {inner} in systemd's namespace")
    }

    /// Whether `pid` shares the PID namespace of this systemd.
    fn in_namespace(&self, pid: u32) -> bool {
        let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        ns(pid).is_some() && ns(pid) == ns(self.pid)
    }

    /// What systemd wrote to its console so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // SIGKILL to the namespace's init takes every process in the namespace with it (a
        // SIGTERM would only start systemd's own shutdown); unshare and script then exit.
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        self.terminal.stop();
        // The cgroups systemd made, deepest first, once their processes are gone.
        for _ in 0..100 {
            if remove_cgroup(&self.cgroup).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cgroup {} left behind", self.cgroup.display());
    }
}

/// Removes the cgroup `dir` and those below it (a cgroup's files go with its directory).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Where the machine's cgroup2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified
/// beside the v1 hierarchies).
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .and_then(|fields| fields.get(1).map(PathBuf::from))
        .context("no cgroup2 hierarchy is mounted")
}
