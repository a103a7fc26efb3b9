//! `cargo xtask bench history` (`cargo bench -p sinkhole-tests --bench history`): how long
//! `sinkhole addresses` and `sinkhole policy replay` take over a large session log, and the
//! memory they use (the release binary, timed by `/usr/bin/time`).
//!
//! The log is written for the run with the daemon's own line writer (`SessionEnd::to_line`):
//! `HISTORY_BENCH_SESSIONS` sessions (default 1,000,000) over ten days, nine of them rotated and
//! compressed as the daemon rotates them, the last in `sessions.jsonl`. Each session is a bot's:
//! a HELO, a sender, one to three of 10,000 trap addresses (a few of them often, most rarely),
//! one of 200,000 clients, one of a dozen signature sets, a message for most, and an
//! eleven-line transcript (about 1.1 KB a line in all). 2,000 of the trap addresses have files
//! of their own (a tenth closed, some blocking senders, some with `auto_close`); the replayed
//! policy refuses local senders at MAIL, one HELO pattern, and stalls one recipient domain.
//! `HISTORY_BENCH_ROUNDS` (default 3) runs each command that many times; `HISTORY_BENCH_DIR`
//! writes the log into that directory and keeps it.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use sinkhole::capture::session_log::{SessionEnd, session_id};
use sinkhole::signature::Signature;
use sinkhole::smtp::{Direction, RcptRecord, SessionRecord, TransactionRecord, TranscriptLine};
use sinkhole_tests::{Rng, sinkhole_bin, temp_dir};

const TRAPS: u64 = 10_000;
const CLIENTS: u64 = 200_000;
const FILES: u64 = 2_000;
const DAYS: u64 = 10;

/// Mostly small numbers below `n`: a few traps and clients are hit often.
fn skewed(rng: &mut Rng, n: u64) -> u64 {
    let r = rng.below(n);
    r * r / n
}

fn trap(n: u64) -> String {
    format!("trap{n}@example.org")
}

const SETS: &[&[Signature]] = &[
    &[Signature::NoRdns],
    &[Signature::NoRdns, Signature::PipelinedRunAhead],
    &[Signature::MailFromEqRcptTo, Signature::NoRdns],
    &[Signature::HeloBareIp, Signature::NoRdns],
    &[Signature::HeloIpLiteral],
    &[Signature::HeloMismatch, Signature::NoRdns],
    &[Signature::Pregreet, Signature::NoRdns],
    &[Signature::RdnsNoForward],
    &[Signature::DnsblListed, Signature::NoRdns],
    &[Signature::MailFromLocalDomain, Signature::MailFromEqRcptTo],
    &[],
    &[Signature::OutOfSequence, Signature::PipelinedRunAhead],
];

/// One bot's session, as the daemon would log it.
fn session(rng: &mut Rng, n: u64, at: SystemTime) -> SessionEnd {
    let client_n = skewed(rng, CLIENTS);
    let client = IpAddr::V4(Ipv4Addr::from(0xC000_0000u32 + client_n as u32));
    let helo = format!("host{}.dyn.example.net", client_n);
    let mail_from = if rng.below(10) == 0 {
        trap(rng.below(TRAPS))
    } else {
        format!("offers{}@spam{}.example", rng.below(100), rng.below(1000))
    };
    let rcpts: Vec<RcptRecord> = (0..1 + rng.below(3))
        .map(|_| RcptRecord {
            addr: trap(skewed(rng, TRAPS)),
            code: if rng.below(8) == 0 { 550 } else { 250 },
        })
        .collect();
    let delivered = rcpts.iter().any(|r| r.code == 250);
    let line = |ms, direction, line: &str| TranscriptLine {
        ms,
        direction,
        line: line.to_owned(),
    };
    let transcript = vec![
        line(0, Direction::Server, "220 sinkhole.bench ESMTP"),
        line(41, Direction::Client, &format!("EHLO {helo}")),
        line(41, Direction::Server, "250 CHUNKING"),
        line(83, Direction::Client, &format!("MAIL FROM:<{mail_from}>")),
        line(83, Direction::Server, "250 2.1.0 Ok"),
        line(
            84,
            Direction::Client,
            &format!("RCPT TO:<{}>", rcpts[0].addr),
        ),
        line(84, Direction::Server, "250 2.1.5 Ok"),
        line(85, Direction::Client, "DATA"),
        line(
            85,
            Direction::Server,
            "354 2.0.0 End data with <CR><LF>.<CR><LF>",
        ),
        line(130, Direction::Client, "<2048 bytes>"),
        line(
            131,
            Direction::Server,
            "250 2.0.0 Ok: queued as 1796454802.M961753P8255Q1.sinkhole.bench",
        ),
    ];
    let record = SessionRecord {
        helo: Some(helo),
        pipelined: rng.below(2) == 0,
        signatures: SETS[rng.below(SETS.len() as u64) as usize].to_vec(),
        transactions: vec![TransactionRecord {
            mail_from,
            mail_code: 250,
            rcpts,
            data_code: delivered.then_some(250),
            message: delivered.then(|| format!("1796454802.M{n}P8255Q1.sinkhole.bench")),
            size: 2048,
        }],
        transcript,
        connect_code: Some(220),
        helo_code: Some(250),
        ..SessionRecord::default()
    };
    let end = at + Duration::from_millis(131);
    SessionEnd::new(
        session_id(at, n),
        SocketAddr::new(client, 40_000),
        at,
        end,
        record,
    )
}

/// Writes the log: nine rotated, compressed days and the current file. Its size on disk.
fn write_log(storage: &Path, sessions: u64) -> Result<(u64, u64)> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
    let per_day = sessions.div_ceil(DAYS);
    let step = Duration::from_secs(86_400) / per_day.max(1) as u32;
    let mut line = Vec::with_capacity(4096);
    let (mut plain, mut on_disk) = (0u64, 0u64);
    for day in 0..DAYS {
        let first = day * per_day;
        let last = ((day + 1) * per_day).min(sessions);
        let day_start = start + Duration::from_secs(86_400 * day);
        let current = day + 1 == DAYS;
        let path = if current {
            storage.join("sessions.jsonl")
        } else {
            let rotated = day_start + Duration::from_secs(86_400);
            let stamp = humantime::format_rfc3339_millis(rotated)
                .to_string()
                .replace(':', "-");
            storage.join(format!("sessions.jsonl.{stamp}.gz"))
        };
        let file = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        let mut out: Box<dyn Write> = if current {
            Box::new(file)
        } else {
            Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            ))
        };
        for n in first..last {
            line.clear();
            session(&mut rng, n, day_start + step * (n - first) as u32).to_line(&mut line);
            plain += line.len() as u64;
            out.write_all(&line)?;
        }
        out.flush()?;
        drop(out);
        on_disk += fs::metadata(&path)?.len();
    }
    Ok((plain, on_disk))
}

/// The trap addresses' files: one each for the first [`FILES`].
fn write_files(dir: &Path) -> Result<()> {
    for n in 0..FILES {
        let mut text = format!("addresses = [\"{}\"]\n", trap(n));
        if n % 10 == 0 {
            text.push_str("state = \"closed\"\nclosed_at = \"2026-11-30T00:00:00Z\"\n");
        }
        if n % 7 == 0 {
            text.push_str("[block]\nsenders = [\"@spam1.example\", \"*@spam2*.example\"]\n");
        }
        if n % 5 == 0 {
            text.push_str("[auto_close]\nmessages = 50\n");
        }
        fs::write(dir.join(format!("trap{n}.toml")), text)?;
    }
    Ok(())
}

const NEW_POLICY: &str = r#"
local_domains = ["example.org"]
[[rule]]
phase = "helo"
helo = "host1*.dyn.example.net"
action = "reject"
[[rule]]
to = "@example.org"
from = "@spam3.example"
action = "stall"
[auto_close]
clients = 20
window = "1h"
"#;

/// Runs the release binary under `/usr/bin/time`: (seconds, peak RSS in KiB, stdout bytes).
fn timed(args: &[&str]) -> Result<(f64, u64, usize)> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(sinkhole_bin())
        .args(args)
        .output()
        .context("run /usr/bin/time sinkhole")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "sinkhole {args:?}: {stderr}");
    let last = stderr.lines().last().unwrap_or("");
    let mut parts = last.split_whitespace();
    let secs: f64 = parts.next().context("time's seconds")?.parse()?;
    let kib: u64 = parts.next().context("time's RSS")?.parse()?;
    Ok((secs, kib, out.stdout.len()))
}

fn main() -> Result<()> {
    let sessions: u64 = std::env::var("HISTORY_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = std::env::var("HISTORY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // `HISTORY_BENCH_DIR`: write the log there and keep it (to profile the commands on it).
    let temp = temp_dir("history-bench");
    let dir =
        std::env::var_os("HISTORY_BENCH_DIR").map_or_else(|| temp.path().to_owned(), Into::into);
    let storage = dir.join("data");
    let addresses = dir.join("addresses");
    fs::create_dir_all(&storage)?;
    fs::create_dir_all(&addresses)?;
    let written = Instant::now();
    let (plain, on_disk) = write_log(&storage, sessions)?;
    write_files(&addresses)?;
    let config = dir.join("sinkhole.toml");
    fs::write(
        &config,
        format!(
            "[storage]\ndir = \"{}\"\n[policy]\naddresses_dir = \"{}\"\n",
            storage.display(),
            addresses.display()
        ),
    )?;
    let policy = dir.join("new.toml");
    fs::write(&policy, NEW_POLICY)?;
    eprintln!(
        "{sessions} sessions written in {:.1?}: {:.0} MiB of JSON lines, {:.0} MiB on disk \
         (nine days compressed); {FILES} address files",
        written.elapsed(),
        plain as f64 / f64::from(1 << 20),
        on_disk as f64 / f64::from(1 << 20),
    );
    let config = config.to_str().context("UTF-8 path")?;
    let policy = policy.to_str().context("UTF-8 path")?;
    let commands: [(&str, Vec<&str>); 2] = [
        (
            "addresses --json",
            vec!["addresses", "--json", "--config", config],
        ),
        (
            "policy replay --json",
            vec![
                "policy", "replay", "--policy", policy, "--json", "--config", config,
            ],
        ),
    ];
    println!("| command | sessions | runs (s) | median (s) | sessions/s | peak RSS (MiB) |");
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    for (name, args) in &commands {
        let mut runs = Vec::new();
        let mut peak = 0;
        for _ in 0..rounds {
            let (secs, kib, _) = timed(args)?;
            runs.push(secs);
            peak = peak.max(kib);
        }
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let shown: Vec<String> = runs.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "| `sinkhole {name}` | {sessions} | {} | {median:.2} | {:.0} | {:.0} |",
            shown.join(", "),
            sessions as f64 / median,
            peak as f64 / 1024.0
        );
    }
    Ok(())
}
