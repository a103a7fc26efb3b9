//! The service manager's readiness protocol (`sd_notify(3)`, systemd's `Type=notify`):
//! `READY=1` once the daemon serves (XDP attached, maps pinned, listeners open),
//! `RELOADING=1` and `READY=1` around a policy reload, `STOPPING=1` when it stops, and
//! `MAINPID=` from a `--takeover` daemon that replaces the unit's main process.
//!
//! The socket (`$NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace) is connected at
//! start-up, before the sandbox forbids new Unix sockets, and kept: every later message is one
//! `send` on it. Hand-written rather than a crate because the crates open a socket per message.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connected notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
}

impl Notifier {
    /// The service manager's socket, when the daemon runs under one (`$NOTIFY_SOCKET` set); a
    /// socket that cannot be reached is logged and left out.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os(NOTIFY_SOCKET)?;
        let path = path.to_string_lossy().into_owned();
        match Notifier::connect(&path) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                tracing::warn!(
                    "{NOTIFY_SOCKET}={path}: {e}; the service manager is not told of readiness"
                );
                None
            }
        }
    }

    fn connect(path: &str) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.connect_addr(&addr)?;
            }
            None => socket.connect(path)?,
        }
        Ok(Notifier { socket })
    }

    /// Sends `state` (lines of `KEY=VALUE`); a failure is logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send(state.as_bytes()) {
            tracing::warn!("cannot tell the service manager {state:?}: {e}");
        }
    }
}
