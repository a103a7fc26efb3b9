//! The system calls the daemon makes once it serves, as a seccomp filter built here with
//! `seccompiler` (no policy file to get out of step with the code).
//!
//! The list is what the serving daemon was seen to call (the whole test suite run with the
//! filter logging instead of refusing, `dmesg | grep type=1326`), grouped by who needs it.
//! Calls whose arguments say what they do are narrowed further: `socket` to IPv4 and IPv6,
//! `ioctl` to the three requests the standard library and the logger make, `prctl` to naming a
//! thread, `bpf` to the map and object-info commands (no program load, no map creation, no
//! pinning, no link changes), `kill` to SIGTERM (the old daemon at `--takeover`) and the
//! liveness probe, `tgkill` to this process (`abort()`).
//!
//! Anything else fails with `EPERM` ([`REFUSED`]): see `docs/reliability.md` for why not a kill.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What a call outside the list gets.
pub const REFUSED: SeccompAction = SeccompAction::Errno(libc::EPERM as u32);

/// Calls allowed whatever their arguments.
const ANY_ARGUMENTS: &[libc::c_long] = &[
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Threads (spawned after confinement: resolver, capture, commit, metrics, log compression)
    // and their synchronisation.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    // Signals: signal-hook's handlers, the standard library's stack overflow guard.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // Descriptors and the event loops (mio, tokio).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    libc::SYS_getrandom,
    libc::SYS_prlimit64,
    // Storage: Maildir (O_TMPFILE, linkat, rename), the session log and its rotation, the
    // disk floor (statvfs), the pid file, unpinning the XDP link at stop.
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_readlinkat,
    // A rotated log keeps its time when compressed.
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_getcwd,
    // Per-address files (`policy.addresses_dir`): watched with inotify; `auto_close` writes
    // a file under its lock (flock), as a temp file renamed into place, keeping mode and owner.
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_flock,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fchmod,
    libc::SYS_fchown,
    // Sockets: SMTP clients, /metrics, DNS over UDP and TCP.
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    // The journal takes a large event as a sealed memfd (tracing-journald).
    libc::SYS_memfd_create,
    // Credentials are only read.
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
];

/// x86_64 keeps older forms of some calls, which the C library still uses there.
#[cfg(target_arch = "x86_64")]
const ANY_ARGUMENTS_X86_64: &[libc::c_long] = &[
    libc::SYS_arch_prctl,
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_open,
    libc::SYS_readlink,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_mkdir,
];
#[cfg(not(target_arch = "x86_64"))]
const ANY_ARGUMENTS_X86_64: &[libc::c_long] = &[];

// `bpf()` commands (include/uapi/linux/bpf.h): the map work of the blocker, the sweeps and the
// counters, and reading a link's program id at stop.
const BPF_MAP_LOOKUP_ELEM: u64 = 1;
const BPF_MAP_UPDATE_ELEM: u64 = 2;
const BPF_MAP_DELETE_ELEM: u64 = 3;
const BPF_MAP_GET_NEXT_KEY: u64 = 4;
const BPF_OBJ_GET_INFO_BY_FD: u64 = 15;

/// `ioctl` requests: FIONBIO (std's `set_nonblocking`), FIOCLEX, TCGETS (is stderr a terminal).
const IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::TCGETS];

#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter: {0}")]
pub struct FilterError(#[from] seccompiler::BackendError);

/// The filter for a daemon whose process id is `own_pid`: [`REFUSED`] for every call not
/// listed here, or listed with arguments that match none of its rules.
pub fn filter(own_pid: u32) -> Result<BpfProgram, FilterError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ANY_ARGUMENTS
        .iter()
        .chain(ANY_ARGUMENTS_X86_64)
        .map(|&call| (call, Vec::new()))
        .collect();
    let mut one_of = |call: libc::c_long, arg: u8, values: &[u64]| -> Result<(), FilterError> {
        let alternatives = values
            .iter()
            .map(|&value| {
                let condition =
                    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?;
                SeccompRule::new(vec![condition])
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(call, alternatives);
        Ok(())
    };
    one_of(
        libc::SYS_socket,
        0,
        &[libc::AF_INET as u64, libc::AF_INET6 as u64],
    )?;
    one_of(libc::SYS_ioctl, 1, IOCTLS)?;
    one_of(libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64])?;
    one_of(
        libc::SYS_bpf,
        0,
        &[
            BPF_MAP_LOOKUP_ELEM,
            BPF_MAP_UPDATE_ELEM,
            BPF_MAP_DELETE_ELEM,
            BPF_MAP_GET_NEXT_KEY,
            BPF_OBJ_GET_INFO_BY_FD,
        ],
    )?;
    one_of(libc::SYS_kill, 1, &[libc::SIGTERM as u64, 0])?;
    one_of(libc::SYS_tgkill, 0, &[u64::from(own_pid)])?;
    let filter = SeccompFilter::new(rules, REFUSED, SeccompAction::Allow, target_arch())?;
    Ok(filter.try_into()?)
}

#[cfg(target_arch = "x86_64")]
fn target_arch() -> TargetArch {
    TargetArch::x86_64
}

#[cfg(target_arch = "aarch64")]
fn target_arch() -> TargetArch {
    TargetArch::aarch64
}
