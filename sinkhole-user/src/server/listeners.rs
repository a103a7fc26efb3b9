//! The listening sockets: one per `smtp.listen` address (and the metrics endpoint's).

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may queue per listener (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr`, for the event loop (see [`bind_std`]).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = bind_std(addr)?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener))
}

/// A blocking listener on `addr`: SO_REUSEADDR (restarts do not wait for TIME_WAIT),
/// SO_REUSEPORT (a daemon taking over, `sinkhole run --takeover`, listens beside the one it
/// replaces; the kernel only shares a port between sockets of the same user), and IPV6_V6ONLY
/// on IPv6 so `0.0.0.0:P` and `[::]:P` can both be bound.
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
