//! The listening sockets: one per `smtp.listen` address.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may queue per listener (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr`: SO_REUSEADDR (restarts do not wait for TIME_WAIT), and
/// IPV6_V6ONLY on IPv6 so `0.0.0.0:P` and `[::]:P` can both be bound.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}
