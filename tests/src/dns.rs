//! Real DNS servers for the scoring tests, on free loopback ports: `rbldnsd` for DNSBL zones,
//! `nsd` for PTR and forward names, a server that never answers, and a small router that sends
//! each query to the server of its zone.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{ChildGuard, free_port};

/// A directory for a test server's files, world-readable (servers drop to their own user).
fn server_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn write_readable(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A query for `name`/`qtype` (class IN, recursion desired), `id` in the header.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + name.len() + 6);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

/// The question name of a DNS message, lowercased, without the trailing dot.
pub fn dns_question_name(packet: &[u8]) -> Option<String> {
    let mut name = String::new();
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            return Some(name);
        }
        if len > 63 {
            return None;
        }
        let label = packet.get(at + 1..at + 1 + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
}

/// Waits until a DNS server answers anything (even REFUSED) on UDP at `addr`.
pub fn wait_for_dns(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let until = Instant::now() + within;
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        socket.send_to(&dns_query(0x5157, "probe.invalid", 1), addr)?;
        if socket.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("no DNS server answering at {addr} within {within:?}")
}

/// The `$SOA` line that starts a zone's first `rbldnsd` dataset (the SOA of [`zone_file`]).
pub const RBLDNSD_SOA: &str = "$SOA 300 ns.test. hostmaster.test. 1 600 300 86400 300\n";

/// A running `rbldnsd` on a loopback port (stopped on drop).
pub struct Rbldnsd {
    pub addr: SocketAddr,
    pub process: ChildGuard,
    /// The zones it serves, each once, in the order first given.
    pub zones: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Starts `rbldnsd` serving `datasets`: (zone, dataset type such as `ip4set`/`ip6trie`, the
/// dataset's lines). Repeating a zone combines datasets into it (one A record each).
pub fn start_rbldnsd(datasets: &[(&str, &str, &str)]) -> anyhow::Result<Rbldnsd> {
    let dir = server_dir("rbldnsd-")?;
    let mut specs = Vec::new();
    let mut zones: Vec<String> = Vec::new();
    for (i, (zone, kind, lines)) in datasets.iter().enumerate() {
        let file = format!("data{i}");
        write_readable(&dir.path().join(&file), lines)?;
        specs.push(format!("{zone}:{kind}:{file}"));
        if !zones.iter().any(|z| z == zone) {
            zones.push((*zone).to_owned());
        }
    }
    let mut last_error = None;
    for _ in 0..3 {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut command = Command::new("rbldnsd");
        command
            .args(["-n", "-u", "rbldns", "-b"])
            .arg(format!("{}/{}", addr.ip(), addr.port()))
            .arg("-w")
            .arg(dir.path())
            .args(&specs);
        command.stdout(Stdio::null());
        let mut process = ChildGuard::spawn(command)
            .context("starting rbldnsd (installed by `cargo xtask setup`)")?;
        match wait_for_dns(addr, Duration::from_secs(5)).and_then(|()| process.check_running()) {
            Ok(()) => {
                return Ok(Rbldnsd {
                    addr,
                    process,
                    zones,
                    _dir: dir,
                });
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error
        .expect("tried")
        .context("rbldnsd did not come up"))
}

/// A zone file for [`start_nsd`]: SOA and NS records, then `records` (one per line, names
/// relative to the zone).
pub fn zone_file(records: &str) -> String {
    format!(
        "$TTL 300\n@ IN SOA ns.test. hostmaster.test. 1 600 300 86400 300\n@ IN NS ns.test.\n{records}"
    )
}

/// A running `nsd` on a loopback port (stopped on drop).
pub struct Nsd {
    pub addr: SocketAddr,
    pub process: ChildGuard,
    _dir: tempfile::TempDir,
}

/// Starts `nsd` authoritative for `zones`: (zone name, zone file text; `$ORIGIN` is the zone).
pub fn start_nsd(zones: &[(&str, &str)]) -> anyhow::Result<Nsd> {
    let dir = server_dir("nsd-")?;
    let d = dir.path().display();
    let mut zone_config = String::new();
    for (i, (zone, text)) in zones.iter().enumerate() {
        let file = format!("zone{i}");
        write_readable(&dir.path().join(&file), text)?;
        let _ = write!(
            zone_config,
            "zone:\n  name: \"{zone}\"\n  zonefile: \"{file}\"\n"
        );
    }
    let mut last_error = None;
    for _ in 0..3 {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let config = format!(
            "server:\n  ip-address: {ip}@{port}\n  username: \"\"\n  chroot: \"\"\n  \
             zonesdir: \"{d}\"\n  database: \"\"\n  zonelistfile: \"{d}/zone.list\"\n  \
             xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  \
             server-count: 1\n  do-ip6: no\n  verbosity: 0\n\
             remote-control:\n  control-enable: no\n{zone_config}",
            ip = addr.ip(),
            port = addr.port(),
        );
        let config_path = dir.path().join("nsd.conf");
        write_readable(&config_path, &config)?;
        let mut command = Command::new("nsd");
        command.arg("-d").arg("-c").arg(&config_path);
        command.stdout(Stdio::null());
        let mut process = ChildGuard::spawn(command)
            .context("starting nsd (installed by `cargo xtask setup`)")?;
        match wait_for_dns(addr, Duration::from_secs(5)).and_then(|()| process.check_running()) {
            Ok(()) => {
                return Ok(Nsd {
                    addr,
                    process,
                    _dir: dir,
                });
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("tried").context("nsd did not come up"))
}

/// A DNS server that takes queries and never answers: a UDP socket nobody reads and a TCP
/// listener nobody accepts from, on the same loopback port.
pub struct StalledDns {
    pub addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

pub fn stalled_dns() -> anyhow::Result<StalledDns> {
    for _ in 0..10 {
        let port = free_port();
        let (Ok(udp), Ok(tcp)) = (
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port)),
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)),
        ) else {
            continue;
        };
        return Ok(StalledDns {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            _udp: udp,
            _tcp: tcp,
        });
    }
    bail!("no port for a stalled DNS server")
}

/// A UDP DNS forwarder that sends each query to the upstream serving the longest matching
/// zone suffix, as a recursive resolver with stub zones would: lets one resolver talk to
/// `rbldnsd` for DNSBL zones and `nsd` for PTR and forward names. Stops on drop.
pub struct DnsRouter {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Query ids are rewritten, so clients' ids never collide upstream: ours → (theirs, client).
type Pending = Arc<Mutex<std::collections::HashMap<u16, (u16, SocketAddr)>>>;

pub fn start_dns_router(routes: &[(&str, SocketAddr)]) -> anyhow::Result<DnsRouter> {
    let front = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = front.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let pending: Pending = Arc::default();
    let poll = Some(Duration::from_millis(50));
    front.set_read_timeout(poll)?;

    let mut upstreams = Vec::new();
    let mut threads = Vec::new();
    for (suffix, server) in routes {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        socket.connect(server)?;
        socket.set_read_timeout(poll)?;
        let (back, front, stop, pending) = (
            socket.try_clone()?,
            front.try_clone()?,
            stop.clone(),
            pending.clone(),
        );
        // Relays answers back to whoever asked.
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let Ok(len) = back.recv(&mut buf) else {
                    continue;
                };
                if len < 12 {
                    continue;
                }
                let ours = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some((theirs, client)) = pending.lock().unwrap().remove(&ours) {
                    buf[..2].copy_from_slice(&theirs.to_be_bytes());
                    let _ = front.send_to(&buf[..len], client);
                }
            }
        }));
        upstreams.push((suffix.trim_end_matches('.').to_ascii_lowercase(), socket));
    }

    let stop_front = stop.clone();
    threads.push(std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut next_id: u16 = 0;
        while !stop_front.load(Ordering::Relaxed) {
            let Ok((len, client)) = front.recv_from(&mut buf) else {
                continue;
            };
            let Some(name) = dns_question_name(&buf[..len]) else {
                continue;
            };
            let in_zone = |zone: &str| {
                zone.is_empty()
                    || name == zone
                    || name
                        .strip_suffix(zone)
                        .is_some_and(|head| head.ends_with('.'))
            };
            let Some((_, upstream)) = upstreams
                .iter()
                .filter(|(zone, _)| in_zone(zone))
                .max_by_key(|(zone, _)| zone.len())
            else {
                continue;
            };
            next_id = next_id.wrapping_add(1);
            let theirs = u16::from_be_bytes([buf[0], buf[1]]);
            let mut pending = pending.lock().unwrap();
            if pending.len() >= 4096 {
                // Upstream lost these; the clients have long retried or given up.
                pending.clear();
            }
            pending.insert(next_id, (theirs, client));
            drop(pending);
            buf[..2].copy_from_slice(&next_id.to_be_bytes());
            let _ = upstream.send(&buf[..len]);
        }
    }));
    Ok(DnsRouter {
        addr,
        stop,
        threads,
    })
}

impl Drop for DnsRouter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What the scoring tests resolve through: `rbldnsd` for the DNSBL zones and `nsd` for names
/// and reverse zones, behind a [`DnsRouter`] as behind a recursive resolver.
pub struct DnsWorld {
    pub rbldnsd: Rbldnsd,
    pub nsd: Nsd,
    /// The one nameserver to configure.
    pub router: DnsRouter,
}

/// Starts `nsd` with `zones` (as [`start_nsd`]) and a router in front of it and `rbldnsd`: each
/// of `rbldnsd`'s zones goes to `rbldnsd`; to `nsd` goes each of its zones, a reverse zone as
/// its whole tree (`in-addr.arpa`, `ip6.arpa`), so that reverse names it does not hold are
/// answered (refused) rather than lost.
pub fn start_dns_world(rbldnsd: Rbldnsd, zones: &[(&str, &str)]) -> anyhow::Result<DnsWorld> {
    let nsd = start_nsd(zones)?;
    let mut routes: Vec<(&str, SocketAddr)> = rbldnsd
        .zones
        .iter()
        .map(|z| (z.as_str(), rbldnsd.addr))
        .collect();
    for (zone, _) in zones {
        let route = ["in-addr.arpa", "ip6.arpa"]
            .into_iter()
            .find(|tree| zone.ends_with(tree))
            .unwrap_or(zone);
        if !routes.iter().any(|(r, _)| *r == route) {
            routes.push((route, nsd.addr));
        }
    }
    let router = start_dns_router(&routes)?;
    Ok(DnsWorld {
        rbldnsd,
        nsd,
        router,
    })
}
