//! `sinkhole campaigns` over large session logs: 500,000 and 1,000,000 sessions in the shapes
//! of the campaign replay (`sinkhole_tests::replay::synthetic_log`: the seed's campaign and the
//! second one in their variants, other senders and scanners, from 50,000 clients, one message
//! on disk per 100 sessions that reached DATA), through the release binary. Prints the wall
//! time and the peak resident memory of each run (three runs per size) as a Markdown table.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sinkhole_tests::replay::synthetic_log;
use sinkhole_tests::sinkhole_bin;

const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    println!("| sessions | log size | wall time (median of {RUNS}) | peak RSS (max) | campaigns |");
    println!("|---:|---:|---:|---:|---:|");
    for sessions in [500_000u64, 1_000_000] {
        let dir = tempfile::tempdir()?;
        let start = SystemTime::now() - Duration::from_secs(30 * 86400);
        synthetic_log(dir.path(), sessions, 50_000, 100, start)?;
        let size = std::fs::metadata(dir.path().join("sessions.jsonl"))?.len();
        let mut times = Vec::new();
        let mut peak = 0;
        let mut campaigns = 0;
        for _ in 0..RUNS {
            let started = Instant::now();
            let child = Command::new(sinkhole_bin())
                .args(["campaigns", "--json", "--storage"])
                .arg(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let (out, rss_kib) = wait_with_rusage(child)?;
            times.push(started.elapsed());
            peak = peak.max(rss_kib);
            let report: serde_json::Value = serde_json::from_slice(&out)?;
            campaigns = report.as_array().map_or(0, Vec::len);
        }
        times.sort();
        println!(
            "| {sessions} | {:.0} MB | {:.2} s | {:.1} MiB | {campaigns} |",
            size as f64 / 1e6,
            times[RUNS / 2].as_secs_f64(),
            peak as f64 / 1024.0
        );
    }
    Ok(())
}

/// The child's stdout and its peak resident set (KiB), from `wait4`.
fn wait_with_rusage(mut child: std::process::Child) -> anyhow::Result<(Vec<u8>, i64)> {
    use std::io::Read as _;
    let mut out = Vec::new();
    child.stdout.take().expect("piped").read_to_end(&mut out)?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for the kernel to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child` is our unwaited child; status and usage point at live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    anyhow::ensure!(status == 0, "sinkhole campaigns exited with {status}");
    Ok((out, usage.ru_maxrss))
}
