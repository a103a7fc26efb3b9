//! `cargo xtask bench smtp` (`cargo bench -p sinkhole-tests --bench smtp`): sinkhole against Postfix's
//! `smtp-sink` under the same load in the same run, plus the loads `smtp-source` cannot make
//! (EHLO + PIPELINING) and the idle-connection footprint. Prints a Markdown table. The rows
//! without storage also run a do-nothing server ([`NullSmtp`]) under the same load: what the
//! load generator can do on this machine, the ceiling for any server.
//!
//! Loopback only. `SMTP_BENCH_MESSAGES` (default 20000) and `SMTP_BENCH_IDLE` (default 20000)
//! scale it down for a quick run; 0 leaves that part out. Each throughput row runs the peer and
//! sinkhole alternately `SMTP_BENCH_ROUNDS` times (default 3) and compares the medians, so a
//! busy moment of a shared machine does not decide the ratio. Storage (sinkhole's Maildir and
//! `smtp-sink -d`'s directory) is in temporary directories on one filesystem, one per server
//! for each row.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sinkhole_tests::daemon::{Daemon, dns_without_zones, smtp_config};
use sinkhole_tests::dns::{Rbldnsd, start_rbldnsd};
use sinkhole_tests::null_smtp::NullSmtp;
use sinkhole_tests::{free_port, rss_kib, temp_dir};
use tempfile::TempDir;

/// Parallel sessions, as `smtp-source -s 20`.
const SESSIONS: usize = 20;
/// Message payload bytes, as `smtp-source -l 1000`.
const LENGTH: usize = 1000;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `smtp-sink` on a free port, killed on drop.
struct SmtpSink {
    child: Child,
    addr: SocketAddr,
    /// Its standard error, shown when a load against it fails.
    stderr: tempfile::NamedTempFile,
}

impl SmtpSink {
    fn start(dump: Option<&Path>) -> Result<SmtpSink> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new("smtp-sink");
        if rustix::process::geteuid().is_root() {
            // smtp-sink refuses to run as root.
            command.args(["-u", "nobody"]);
        }
        if let Some(dir) = dump {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
            // One file per message, never synced, named by the template plus a random hex
            // suffix. smtp-sink seeds its random numbers with the time in seconds, so two
            // sinks started in the same second draw the same names, and in a directory they
            // share the second gives up ("mail_file_open: something is looping") after 100
            // names taken: each sink's names get a prefix of their own.
            static STARTED: AtomicUsize = AtomicUsize::new(0);
            let run = STARTED.fetch_add(1, Ordering::Relaxed);
            command.arg("-d").arg(format!("{}/{run}-", dir.display()));
        }
        let stderr = tempfile::NamedTempFile::new()?;
        let child = command
            .arg("-c")
            .arg(addr.to_string())
            .arg("1000")
            .stdout(Stdio::null())
            .stderr(stderr.reopen()?)
            .spawn()
            .context("run smtp-sink (postfix; cargo xtask setup installs it)")?;
        let sink = SmtpSink {
            child,
            addr,
            stderr,
        };
        wait_listening(addr)?;
        Ok(sink)
    }
}

/// A server under `smtp-source`'s load: its address, and what it logged, for when the load
/// fails.
trait Loaded {
    fn addr(&self) -> SocketAddr;
    /// Its name and standard error.
    fn said(&self) -> (&'static str, String);

    /// `smtp-source` against this server, failing with what it logged.
    fn load(&self, sessions: usize, messages: usize, reuse: bool) -> Result<f64> {
        smtp_source(self.addr(), sessions, messages, reuse).with_context(|| {
            let (name, said) = self.said();
            format!("{name} said: {:?}", said.trim())
        })
    }
}

impl Loaded for SmtpSink {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn said(&self) -> (&'static str, String) {
        let said = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        ("smtp-sink", said)
    }
}

impl Loaded for Daemon {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn said(&self) -> (&'static str, String) {
        ("sinkhole", self.stderr())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        ensure!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `smtp-source -s 20 -m N -l 1000 [-d]`: messages per second.
fn smtp_source(addr: SocketAddr, sessions: usize, messages: usize, reuse: bool) -> Result<f64> {
    let mut command = Command::new("smtp-source");
    if reuse {
        command.arg("-d");
    }
    command
        .args([
            "-s",
            &sessions.to_string(),
            "-m",
            &messages.to_string(),
            "-l",
            &LENGTH.to_string(),
        ])
        .arg(addr.to_string())
        .stdout(Stdio::null());
    settle_disks();
    let started = Instant::now();
    let status = command.status().context("run smtp-source")?;
    let elapsed = started.elapsed();
    ensure!(
        status.success(),
        "smtp-source against {addr} failed: {status}"
    );
    Ok(messages as f64 / elapsed.as_secs_f64())
}

/// Writes out everything dirty before a timed run, so that no run pays for the writes of the
/// one before it: a durable store's syncs would otherwise also write out the files the
/// previous run (say, `smtp-sink -d`) left in the page cache.
fn settle_disks() {
    rustix::fs::sync();
}

/// Reads one whole reply; returns its code.
fn read_reply(reader: &mut impl BufRead, line: &mut String) -> Result<u16> {
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            bail!("connection closed");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

/// The project's own load: `SESSIONS` connections, EHLO once, then per message
/// MAIL+RCPT+DATA in one write and the body in the next. Messages per second.
fn pipelined_load(addr: SocketAddr, messages: usize) -> Result<f64> {
    let mut body = Vec::with_capacity(LENGTH + 64);
    body.extend_from_slice(b"Subject: bench\r\n\r\n");
    while body.len() < LENGTH {
        body.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    settle_disks();
    let started = Instant::now();
    let workers: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let share = messages / SESSIONS + usize::from(i < messages % SESSIONS);
            let body = body.clone();
            std::thread::spawn(move || -> Result<()> {
                let stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut writer = stream.try_clone()?;
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                ensure!(read_reply(&mut reader, &mut line)? == 220, "banner: {line}");
                writer.write_all(b"EHLO bench.example\r\n")?;
                ensure!(read_reply(&mut reader, &mut line)? == 250, "EHLO: {line}");
                for _ in 0..share {
                    writer.write_all(
                        b"MAIL FROM:<bench@example.com>\r\nRCPT TO:<trap@example.org>\r\nDATA\r\n",
                    )?;
                    for want in [250, 250, 354] {
                        ensure!(read_reply(&mut reader, &mut line)? == want, "got {line}");
                    }
                    writer.write_all(&body)?;
                    ensure!(
                        read_reply(&mut reader, &mut line)? == 250,
                        "end of data: {line}"
                    );
                }
                writer.write_all(b"QUIT\r\n")?;
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// Opens a connection from `127.0.0.<source>` (each source address has its own ephemeral
/// ports) and waits for the banner; the time that took.
fn banner(addr: SocketAddr, source: u8) -> Result<(TcpStream, Duration)> {
    use socket2::{Domain, Socket, Type};
    let started = Instant::now();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, source], 0)).into())?;
    socket.connect(&addr.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    ensure!(read_reply(&mut reader, &mut line)? == 220, "banner: {line}");
    Ok((stream, started.elapsed()))
}

/// A `KEY: VALUE kB`-style number from a `/proc` file: the first number after `key`.
fn proc_number(path: &str, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path)?;
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} in {path}"))?;
    let after = line[key.len()..].split_whitespace().next();
    Ok(after.with_context(|| format!("{key} value"))?.parse()?)
}

struct IdleResult {
    held: usize,
    bytes_per_connection: f64,
    /// Kernel slab growth per connection, both ends (they are on this host): sockets, files.
    kernel_slab_per_connection: f64,
    /// TCP buffer memory (`/proc/net/sockstat` `mem`) per connection, both ends.
    kernel_buffers_per_connection: f64,
    banner_p50: Duration,
    banner_p99: Duration,
}

fn idle_connections(count: usize, dns: &str) -> Result<IdleResult> {
    let limits = format!(
        "max_connections = {}\nmax_connections_per_ip = {}\nidle_timeout = \"600s\"",
        count + 2000,
        count + 2000
    );
    let mut daemon = Daemon::start_with_tables(&limits, "capture = false", dns);
    // Warm up: the first sessions allocate what every later one reuses.
    for _ in 0..100 {
        banner(daemon.addr, 1)?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(daemon.pid())?;
    let slab_before = proc_number("/proc/meminfo", "Slab:")?;
    let tcp_pages_before = sockstat_tcp_mem()?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let (stream, _) = banner(daemon.addr, 2 + (i % 8) as u8).with_context(|| {
            format!(
                "idle connection {i} of {count}; the daemon said: {}",
                daemon.stderr()
            )
        })?;
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(daemon.pid())?;
    let slab_after = proc_number("/proc/meminfo", "Slab:")?;
    let tcp_pages_after = sockstat_tcp_mem()?;
    let mut latencies = Vec::with_capacity(1000);
    for _ in 0..1000 {
        latencies.push(banner(daemon.addr, 10)?.1);
    }
    latencies.sort();
    drop(held);
    daemon.stop();
    Ok(IdleResult {
        held: count,
        bytes_per_connection: (after.saturating_sub(before) * 1024) as f64 / count as f64,
        kernel_slab_per_connection: (slab_after.saturating_sub(slab_before) * 1024) as f64
            / count as f64,
        kernel_buffers_per_connection: (tcp_pages_after.saturating_sub(tcp_pages_before) * 4096)
            as f64
            / count as f64,
        banner_p50: latencies[latencies.len() / 2],
        banner_p99: latencies[latencies.len() * 99 / 100],
    })
}

/// Pages of TCP buffer memory in use (`/proc/net/sockstat`, `TCP: ... mem N`).
fn sockstat_tcp_mem() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("TCP in sockstat")?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem").context("mem in sockstat")?;
    Ok(words.next().context("mem value")?.parse()?)
}

/// Runs the loads in turn, `rounds` times over; the median rate of each, in order.
fn interleaved<const N: usize>(
    rounds: usize,
    mut loads: [&mut dyn FnMut() -> Result<f64>; N],
) -> Result<[f64; N]> {
    let mut rates = [(); N].map(|()| Vec::with_capacity(rounds));
    for _ in 0..rounds.max(1) {
        for (load, rates) in loads.iter_mut().zip(&mut rates) {
            rates.push(load()?);
        }
    }
    Ok(rates.map(|mut rates| median(&mut rates)))
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

struct Row {
    load: String,
    peer: &'static str,
    peer_rate: f64,
    ours: &'static str,
    our_rate: f64,
    goal: Option<f64>,
    /// The null responder's rate under the same load, where storing plays no part.
    ceiling: Option<f64>,
}

/// A name server for the daemons: `rbldnsd` serving one empty zone, so it refuses every query
/// the daemon makes (PTR, HELO names) at once, as a DNS server that answers does. (A closed port
/// would not do: the resolver ignores the ICMP errors and every lookup waits for its
/// `dnsbl.timeout`, leaving thousands of requests outstanding that no real daemon has.)
fn name_server() -> Result<Rbldnsd> {
    start_rbldnsd(&[(
        "none.bench",
        "ip4set",
        "$SOA 300 ns.bench. hostmaster.bench. 1 600 300 86400 300\n",
    )])
}

/// A sinkhole daemon whose storage (Maildir, session log) is `storage`.
fn sinkhole(capture: bool, dns: &str, storage: &Path) -> Daemon {
    let port = free_port();
    let config = smtp_config(
        port,
        storage,
        "max_connections = 20000\nmax_connections_per_ip = 20000",
        if capture {
            "capture = true"
        } else {
            "capture = false"
        },
        dns,
    );
    Daemon::start_with_config(
        temp_dir("daemon"),
        &config,
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// The directories the runs of one row store into, all removed together once the row is done:
/// removing a run's 20,000 files right after it (and the discards the filesystem then sends to
/// the disk) would slow down the run after it, the other server's.
#[derive(Default)]
struct RowDirs(RefCell<Vec<TempDir>>);

impl RowDirs {
    fn fresh(&self, tag: &str) -> PathBuf {
        let dir = temp_dir(tag);
        let path = dir.path().to_owned();
        self.0.borrow_mut().push(dir);
        path
    }
}

impl Drop for RowDirs {
    fn drop(&mut self) {
        self.0.get_mut().clear();
        settle_disks();
    }
}

fn main() -> Result<()> {
    let messages = env_count("SMTP_BENCH_MESSAGES", 20_000);
    let idle = env_count("SMTP_BENCH_IDLE", 20_000);
    let rounds = env_count("SMTP_BENCH_ROUNDS", 3);
    // The idle test holds that many sockets here too, and the daemon (which inherits the hard
    // limit) needs a few descriptors besides its clients: without CAP_SYS_RESOURCE a hard limit
    // below what is asked caps the connections held.
    let files = sinkhole::daemon::raise_fd_limit(idle as u64 + 4096);
    let held = idle.min(usize::try_from(files.saturating_sub(64)).unwrap_or(usize::MAX));
    let source = |reuse: bool| {
        format!(
            "smtp-source -s {SESSIONS} -m {messages} -l {LENGTH}{}",
            if reuse { " -d" } else { "" }
        )
    };
    let name_server = name_server()?;
    let dns = dns_without_zones(name_server.addr);
    // First, before the loads fill the ephemeral port range with TIME_WAIT sockets.
    let idle_result = if idle > 0 {
        Some(idle_connections(held, &dns)?)
    } else {
        None
    };
    let mut rows = Vec::new();

    for reuse in [false, true] {
        if messages == 0 {
            break;
        }
        let dirs = RowDirs::default();
        let storage = dirs.fresh("sinkhole");
        let [peer_rate, our_rate, ceiling] = interleaved(
            rounds,
            [
                &mut || SmtpSink::start(None)?.load(SESSIONS, messages, reuse),
                &mut || sinkhole(false, &dns, &storage).load(SESSIONS, messages, reuse),
                &mut || smtp_source(NullSmtp::start()?.addr, SESSIONS, messages, reuse),
            ],
        )?;
        rows.push(Row {
            load: source(reuse)
                + if reuse {
                    " (connections reused)"
                } else {
                    " (a connection per message)"
                },
            peer: "smtp-sink",
            peer_rate,
            ours: "sinkhole, capture = false",
            our_rate,
            goal: Some(1.3),
            ceiling: Some(ceiling),
        });
    }

    // Durable capture: group commit needs messages in flight to share a sync, so the same
    // load is also run with more parallel sessions.
    for sessions in [SESSIONS, 10 * SESSIONS] {
        if messages == 0 {
            break;
        }
        // One directory per server for the whole row, as a running spamtrap has one, filled
        // by an untimed run first: a fresh directory's first files go into block groups whose
        // bitmaps are not cached yet, and a single-threaded writer like smtp-sink waits for
        // each (see docs/benchmarks.md): the cost of a new deployment, not of the steady state.
        let dirs = RowDirs::default();
        let dump = dirs.fresh("smtp-sink-dump");
        let storage = dirs.fresh("sinkhole");
        let new = storage.join("data/maildir/new");
        let mut peer = || SmtpSink::start(Some(&dump))?.load(sessions, messages, true);
        let mut ours = || {
            let before = sinkhole_tests::daemon::files_in(&new).len();
            let rate = sinkhole(true, &dns, &storage).load(sessions, messages, true)?;
            let stored = sinkhole_tests::daemon::files_in(&new).len() - before;
            ensure!(
                stored == messages,
                "sinkhole stored {stored} of {messages} messages"
            );
            Ok(rate)
        };
        peer()?;
        ours()?;
        let [peer_rate, our_rate] = interleaved(rounds, [&mut peer, &mut ours])?;
        rows.push(Row {
            load: format!("smtp-source -s {sessions} -m {messages} -l {LENGTH} -d"),
            peer: "smtp-sink -d DIR (no sync)",
            peer_rate,
            ours: "sinkhole, durable capture",
            our_rate,
            goal: (sessions == SESSIONS).then_some(1.0),
            ceiling: None,
        });
    }

    for capture in [false, true] {
        if messages == 0 {
            break;
        }
        let mut peer = || pipelined_load(SmtpSink::start(None)?.addr, messages);
        // One Maildir for the whole row, filled by an untimed run first (when it stores), as
        // in the durable rows above.
        let dirs = RowDirs::default();
        let storage = dirs.fresh("sinkhole");
        let mut ours = || {
            let daemon = sinkhole(capture, &dns, &storage);
            pipelined_load(daemon.addr, messages)
        };
        let (peer_rate, our_rate, ceiling) = if capture {
            ours()?;
            let [peer_rate, our_rate] = interleaved(rounds, [&mut peer, &mut ours])?;
            (peer_rate, our_rate, None)
        } else {
            let mut null = || pipelined_load(NullSmtp::start()?.addr, messages);
            let [peer_rate, our_rate, ceiling] =
                interleaved(rounds, [&mut peer, &mut ours, &mut null])?;
            (peer_rate, our_rate, Some(ceiling))
        };
        rows.push(Row {
            load: format!("smtp-bench EHLO+PIPELINING, {SESSIONS} sessions, {messages} msgs"),
            peer: "smtp-sink",
            peer_rate,
            ours: if capture {
                "sinkhole, durable capture"
            } else {
                "sinkhole, capture = false"
            },
            our_rate,
            goal: None,
            ceiling,
        });
    }

    println!("## SMTP\n");
    println!(
        "| load | peer | peer msg/s | sinkhole | sinkhole msg/s | ratio | goal | null responder msg/s (ceiling vs peer) |"
    );
    println!("|---|---|---:|---|---:|---:|---:|---:|");
    for row in &rows {
        let ratio = row.our_rate / row.peer_rate;
        let goal = row.goal.map_or("-".to_string(), |g| {
            format!("≥ {g:.1}x {}", if ratio >= g { "met" } else { "MISSED" })
        });
        let ceiling = row.ceiling.map_or("-".to_string(), |c| {
            format!("{c:.0} ({:.2}x)", c / row.peer_rate)
        });
        println!(
            "| {} | {} | {:.0} | {} | {:.0} | {ratio:.2}x | {goal} | {ceiling} |",
            row.load, row.peer, row.peer_rate, row.ours, row.our_rate
        );
    }

    let Some(result) = idle_result else {
        return Ok(());
    };
    println!();
    println!(
        "| idle connections held | daemon RSS per connection | kernel slab, both ends | TCP buffers, both ends | banner p50 | banner p99 | goals |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {} | {:.0} B | {:.0} B | {:.0} B | {:.2} ms | {:.2} ms | ≤ 8192 B {}, p99 < 5 ms {} |",
        result.held,
        result.bytes_per_connection,
        result.kernel_slab_per_connection,
        result.kernel_buffers_per_connection,
        result.banner_p50.as_secs_f64() * 1e3,
        result.banner_p99.as_secs_f64() * 1e3,
        if result.bytes_per_connection <= 8192.0 {
            "met"
        } else {
            "MISSED"
        },
        if result.banner_p99 < Duration::from_millis(5) {
            "met"
        } else {
            "MISSED"
        },
    );
    if held < idle {
        println!(
            "\n{idle} idle connections asked, {held} held: the open files limit here is {files} \
             (a hard limit; raising it needs CAP_SYS_RESOURCE), for the daemon and for this client."
        );
    }
    Ok(())
}
