//! One daemon per storage directory, and handing over from a running daemon to a new one.
//!
//! The running daemon's pid is in `STORAGE/sinkhole.pid`. A second `sinkhole run` on the same
//! storage refuses to start. `sinkhole run --takeover` starts beside the running one instead:
//! its XDP program replaces the old one in the pinned link (one step, see
//! [`crate::kernel::xdp`]), its listeners share the ports (SO_REUSEPORT), then it writes its own
//! pid and sends the old daemon SIGTERM, which finishes its sessions and leaves.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal, getpid, kill_process, test_kill_process};

/// The pid file's name inside `storage.dir`.
pub const PID_FILE: &str = "sinkhole.pid";

/// The `sinkhole` daemon that the pid file in `storage` names, if it still runs.
pub fn running(storage: &Path) -> Option<Pid> {
    let text = fs::read_to_string(storage.join(PID_FILE)).ok()?;
    let raw: u32 = text.trim().parse().ok()?;
    let pid = Pid::from_raw(raw.try_into().ok()?)?;
    // A stale file may name a pid reused by another program, or a daemon that was killed and
    // not yet reaped by its parent.
    (pid != getpid() && test_kill_process(pid).is_ok() && is_running_sinkhole(raw)).then_some(pid)
}

/// Whether process `pid` is a live `sinkhole` (not a zombie, which still has its name and
/// answers kill(0)).
pub fn is_running_sinkhole(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| alive_sinkhole(&stat))
}

/// Whether `/proc/PID/stat` describes a live (not zombie, not dead) process named `sinkhole`.
fn alive_sinkhole(stat: &str) -> bool {
    // `PID (COMM) STATE ...`; the name may itself hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next();
    open < close && &stat[open + 1..close] == "sinkhole" && !matches!(state, Some("Z" | "X" | "x"))
}

/// Asks the daemon `pid` to stop (SIGTERM: it finishes in-flight messages, then leaves).
pub fn stop(pid: Pid) -> io::Result<()> {
    kill_process(pid, Signal::TERM)?;
    Ok(())
}

/// `STORAGE/sinkhole.pid` naming this process; removed when dropped unless a newer daemon has
/// written its own pid since.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn write(storage: &Path) -> io::Result<PidFile> {
        let path = storage.join(PID_FILE);
        let tmp = path.with_extension("pid.new");
        fs::write(&tmp, format!("{}\n", getpid().as_raw_nonzero()))?;
        // Renamed into place: a reader never sees half a number.
        fs::rename(&tmp, &path)?;
        Ok(PidFile { path })
    }
}

/// Whether `STORAGE/sinkhole.pid` names process `pid`.
pub fn names(storage: &Path, pid: u32) -> bool {
    fs::read_to_string(storage.join(PID_FILE)).is_ok_and(|text| text.trim() == pid.to_string())
}

/// Whether `STORAGE/sinkhole.pid` names this process: false once a daemon taking over (or a
/// newer start) wrote its own pid there.
pub fn names_this_process(storage: &Path) -> bool {
    names(storage, std::process::id())
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if self.path.parent().is_some_and(names_this_process) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sinkhole-handover-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_stale_or_foreign_pid_is_not_a_running_daemon() {
        let dir = dir("stale");
        assert_eq!(running(&dir), None, "no file");
        fs::write(dir.join(PID_FILE), "not a pid\n").unwrap();
        assert_eq!(running(&dir), None, "garbage");
        // Our own pid (the test binary is not called `sinkhole`, and it is us).
        let file = PidFile::write(&dir).unwrap();
        assert_eq!(running(&dir), None, "own pid");
        drop(file);
        assert!(!dir.join(PID_FILE).exists(), "removed on drop");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_zombie_or_dead_sinkhole_is_not_running() {
        assert!(alive_sinkhole("4242 (sinkhole) S 1 4242 4242 0 -1 4194560"));
        assert!(alive_sinkhole("4242 (sinkhole) R 1"));
        assert!(!alive_sinkhole("4242 (sinkhole) Z 1 4242 4242 0 -1"));
        assert!(!alive_sinkhole("4242 (sinkhole) X 1"));
        assert!(!alive_sinkhole("4242 (sinkholes) S 1"));
        assert!(!alive_sinkhole("4242 (a) sinkhole) S 1"));
        assert!(!alive_sinkhole("garbage"));
    }

    #[test]
    fn a_newer_daemons_pid_file_is_left_in_place() {
        let dir = dir("newer");
        let file = PidFile::write(&dir).unwrap();
        fs::write(dir.join(PID_FILE), "1\n").unwrap();
        drop(file);
        assert_eq!(fs::read_to_string(dir.join(PID_FILE)).unwrap(), "1\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
