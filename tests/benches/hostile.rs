//! `cargo xtask bench hostile` (`cargo bench -p sinkhole-tests --bench hostile`): what a
//! connection costs the daemon (its resident set, `VmRSS`) in each phase a client can hold it
//! in, at 1,000 and 10,000 connections: after the banner, in the middle of a command line,
//! waiting for DNS (a recipient whose reply waits for the score, the name server never
//! answering), in DATA with part of a body sent, in the TLS handshake (after STARTTLS and a
//! ClientHello, the server's flight unanswered), and waiting for the disk (a finished message
//! whose `250` waits for the sync, on a filesystem whose writes the kernel throttles). Prints a
//! Markdown table.
//!
//! Loopback only; every client has a source address of its own (127.1.x.y), so the default
//! per-address limit holds. `HOSTILE_BENCH_COUNTS` (default `1000,10000`) picks the counts. The
//! disk phase needs root (a loop device and the block I/O throttle of the root cgroup); without
//! it that column says why it is empty.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sinkhole::daemon::raise_fd_limit;
use sinkhole_tests::daemon::{Daemon, connect_from, smtp_config};
use sinkhole_tests::dns::stalled_dns;
use sinkhole_tests::slow_disk::SlowDisk;
use sinkhole_tests::{free_port, rss_kib, temp_dir};

/// Body bytes each client sends after DATA (then it waits, its message unfinished).
const PENDING_BODY: usize = 16 * 1024;

/// Client `i`'s own source address.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, 1 + (i % 250) as u8))
}

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr, i: usize) -> Result<Client> {
        let stream = connect_from(addr, source(i), Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// The code of the next whole reply.
    fn reply(&mut self) -> Result<u16> {
        let mut line = String::new();
        loop {
            line.clear();
            ensure!(self.reader.read_line(&mut line)? > 0, "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.get(..3).context("short reply")?.parse()?);
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.reader.get_mut().write_all(bytes)?)
    }

    /// Whether a reply is waiting within `wait`.
    fn replied_within(&mut self, wait: Duration) -> Result<bool> {
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(wait))?;
        let mut byte = [0u8; 1];
        let replied = match stream.peek(&mut byte) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => return Err(e.into()),
        };
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(replied)
    }
}

/// `count` clients with their banner read.
fn connect_all(daemon: &Daemon, count: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let mut client = Client::connect(daemon.addr, i)?;
        ensure!(client.reply()? == 220, "no banner for client {i}");
        clients.push(client);
    }
    Ok(clients)
}

/// The daemon's resident set growth per connection, in KiB, over `baseline`, once it settled
/// (the daemon has taken what was sent: two readings 250 ms apart within 0.5%, or 10 s).
fn per_connection(daemon: &Daemon, baseline: u64, count: usize) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rss = rss_kib(daemon.pid())?;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = rss_kib(daemon.pid())?;
        let settled = now.abs_diff(rss) * 200 <= now;
        rss = now;
        if settled || Instant::now() > deadline {
            return Ok(rss.saturating_sub(baseline) as f64 / count as f64);
        }
    }
}

/// KiB per connection after the banner, mid-command, waiting for DNS, in DATA.
fn phases(count: usize) -> Result<[f64; 4]> {
    let dns = stalled_dns()?;
    let daemon = Daemon::start_with_tables(
        &format!("max_connections = {}\nidle_timeout = \"600s\"", count + 100),
        "",
        &format!(
            "[dnsbl]\nnameservers = [\"{}\"]\ntimeout = \"60s\"\n\
             [[dnsbl.zone]]\nname = \"bl.test\"\nweight = 1\n",
            dns.addr
        ),
    );
    let baseline = rss_kib(daemon.pid())?;
    let first = Instant::now();
    let mut clients = connect_all(&daemon, count)?;
    let banner = per_connection(&daemon, baseline, count)?;
    for client in &mut clients {
        client.send(b"EHLO hostile.example")?;
    }
    let command = per_connection(&daemon, baseline, count)?;
    for client in &mut clients {
        client.send(b"\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<trap@example.org>\r\n")?;
    }
    let dns_wait = per_connection(&daemon, baseline, count)?;
    let waited = first.elapsed();
    for client in &mut clients {
        ensure!(client.reply()? == 250, "EHLO");
        ensure!(client.reply()? == 250, "MAIL");
        ensure!(client.reply()? == 250, "RCPT (after the DNS timeout)");
        client.send(b"DATA\r\n")?;
    }
    // Measured while every score still waited for the name server: before `dnsbl.timeout`.
    ensure!(
        waited < Duration::from_secs(60),
        "{count} connections took {waited:?} to reach the DNS wait"
    );
    let mut body = b"x".repeat(PENDING_BODY - 2);
    body.extend_from_slice(b"\r\n");
    for client in &mut clients {
        ensure!(client.reply()? == 354, "DATA");
        client.send(&body)?;
    }
    let data = per_connection(&daemon, baseline, count)?;
    Ok([banner, command, dns_wait, data])
}

/// KiB per connection in the TLS handshake: STARTTLS, then a ClientHello (made by rustls, so
/// the server does the real work of its first flight), and nothing more.
fn tls_handshake(count: usize) -> Result<f64> {
    let daemon = Daemon::start(
        &format!(
            "max_connections = {}
idle_timeout = \"600s\"",
            count + 100
        ),
        "",
    );
    let baseline = rss_kib(daemon.pid())?;
    let mut clients = connect_all(&daemon, count)?;
    for client in &mut clients {
        client.send(b"EHLO hostile.example\r\nSTARTTLS\r\n")?;
    }
    // No certificate is ever checked: the handshake stops after the ClientHello.
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    );
    let name = rustls::pki_types::ServerName::try_from("sinkhole.test")?;
    for client in &mut clients {
        ensure!(client.reply()? == 250, "EHLO");
        ensure!(client.reply()? == 220, "STARTTLS");
        let mut tls = rustls::ClientConnection::new(config.clone(), name.clone())?;
        let mut hello = Vec::new();
        tls.write_tls(&mut hello)?;
        client.send(&hello)?;
    }
    per_connection(&daemon, baseline, count)
}

/// KiB per connection waiting for the disk: every client sends a whole message and waits for
/// its `250`, which waits for the sync of a filesystem written at 8 KiB/s.
fn disk_wait(count: usize) -> Result<f64> {
    let dir = temp_dir("hostile-disk");
    let disk = SlowDisk::mount(&dir.path().join("data"))?;
    let port = free_port();
    let config = smtp_config(
        port,
        dir.path(),
        &format!(
            "max_connections = {}
idle_timeout = \"600s\"",
            count + 100
        ),
        "min_free = \"16MiB\"",
        "",
    );
    let mut daemon =
        Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)));
    let baseline = rss_kib(daemon.pid())?;
    let mut clients = connect_all(&daemon, count)?;
    for client in &mut clients {
        client.send(
            b"EHLO hostile.example\r\nMAIL FROM:<a@example.com>\r\n\
              RCPT TO:<trap@example.org>\r\nDATA\r\n",
        )?;
    }
    let mut message = b"Subject: waiting\r\n\r\n".to_vec();
    message.extend_from_slice(&b"x".repeat(PENDING_BODY - 2));
    message.extend_from_slice(b"\r\n.\r\n");
    disk.throttle()?;
    for client in &mut clients {
        for (code, what) in [(250, "EHLO"), (250, "MAIL"), (250, "RCPT"), (354, "DATA")] {
            ensure!(client.reply()? == code, "{what}");
        }
        client.send(&message)?;
    }
    let per = per_connection(&daemon, baseline, count)?;
    let waiting = clients
        .iter_mut()
        .step_by((count / 20).max(1))
        .map(|c| c.replied_within(Duration::from_millis(10)))
        .collect::<Result<Vec<bool>>>()?;
    ensure!(
        waiting.iter().all(|replied| !replied),
        "a message was acknowledged while the disk was held: the phase measured is not the wait"
    );
    daemon.kill();
    drop(disk);
    Ok(per)
}

fn main() -> Result<()> {
    let counts: Vec<usize> = std::env::var("HOSTILE_BENCH_COUNTS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|c| c.trim().parse().context("HOSTILE_BENCH_COUNTS"))
        .collect::<Result<_>>()?;
    let most = counts.iter().copied().max().unwrap_or(0);
    let wanted = most as u64 + 1024;
    let files = raise_fd_limit(wanted);
    ensure!(files >= wanted, "open files limit {files} < {wanted}");
    let root = rustix::process::geteuid().is_root();
    println!(
        "| connections | after banner | mid-command | waiting for DNS | in DATA, {} KiB of body sent | TLS handshake | waiting for the disk |",
        PENDING_BODY / 1024
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for count in counts {
        let [banner, command, dns, data] = phases(count)?;
        let tls = tls_handshake(count)?;
        let disk = if root {
            format!("{:.1} KiB", disk_wait(count)?)
        } else {
            "- (needs root)".into()
        };
        println!(
            "| {count} | {banner:.1} KiB | {command:.1} KiB | {dns:.1} KiB | {data:.1} KiB | {tls:.1} KiB | {disk} |"
        );
    }
    Ok(())
}
