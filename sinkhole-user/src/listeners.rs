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
/// replaces; the kernel only shares a port between sockets of the same user), IPV6_V6ONLY
/// on IPv6 so `0.0.0.0:P` and `[::]:P` can both be bound, and TCP_NODELAY, which Linux gives
/// every socket accepted from it (a reply goes out at once, not after Nagle's wait for the
/// ACK of the one before; set here, it costs no system call per connection).
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The sysctl (Linux 5.14) by which the kernel hands the connections waiting in a closing
/// listener's queue to another listener of its SO_REUSEPORT group instead of resetting them.
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Turns `net.ipv4.tcp_migrate_req` on in this network namespace if it is off (it needs
/// CAP_NET_ADMIN: at start-up), so that the daemon a takeover replaces, closing its listeners,
/// loses none of the connections that had arrived in their queues: the new daemon's listeners
/// get them. True if this changed it.
pub fn migrate_queued_on_close() -> io::Result<bool> {
    if std::fs::read_to_string(MIGRATE_REQ)?.trim() != "0" {
        return Ok(false);
    }
    std::fs::write(MIGRATE_REQ, "1")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_no_delay() {
        let listener = bind_std("127.0.0.1:0".parse().expect("an address")).expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("TCP_NODELAY"));
    }
}
