//! `sinkhole campaigns` over large session logs: 500,000 and 1,000,000 sessions in the shapes
//! of the campaign replay (`sinkhole_tests::replay::synthetic_log`: the seed's campaign and the
//! second one in their variants, other senders and scanners, from 50,000 clients, one message
//! on disk per 100 sessions that reached DATA), through the release binary. Prints the wall
//! time and the peak resident memory of each run (three runs per size) as a Markdown table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sinkhole_tests::replay::synthetic_log;
use sinkhole_tests::sinkhole_bin;

const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    println!(
        "| sessions | log size | wall time (median of {RUNS}) | CPU time, user + system (median) | peak RSS (max) | campaigns |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for sessions in [500_000u64, 1_000_000] {
        // SINKHOLE_BENCH_KEEP=DIR keeps each log in DIR/SESSIONS (and reuses it), e.g. to
        // profile `sinkhole campaigns --storage DIR/1000000`.
        let kept = std::env::var_os("SINKHOLE_BENCH_KEEP")
            .map(|d| Path::new(&d).join(sessions.to_string()));
        let temp = tempfile::tempdir()?;
        let dir = kept.as_deref().unwrap_or(temp.path());
        if !dir.join("sessions.jsonl").exists() {
            let start = SystemTime::now() - Duration::from_secs(30 * 86400);
            synthetic_log(dir, sessions, 50_000, 100, start)?;
        }
        let size = std::fs::metadata(dir.join("sessions.jsonl"))?.len();
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        let mut peak = 0;
        let mut campaigns = 0;
        for _ in 0..RUNS {
            let started = Instant::now();
            let child = Command::new(sinkhole_bin())
                .args(["campaigns", "--json", "--storage"])
                .arg(dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let (out, rss_kib, cpu_time) = wait_with_rusage(child)?;
            times.push(started.elapsed());
            cpu.push(cpu_time);
            peak = peak.max(rss_kib);
            let report: serde_json::Value = serde_json::from_slice(&out)?;
            campaigns = report.as_array().map_or(0, Vec::len);
        }
        times.sort();
        cpu.sort();
        println!(
            "| {sessions} | {:.0} MB | {:.2} s | {:.2} s | {:.1} MiB | {campaigns} |",
            size as f64 / 1e6,
            times[RUNS / 2].as_secs_f64(),
            cpu[RUNS / 2].as_secs_f64(),
            peak as f64 / 1024.0
        );
    }
    Ok(())
}

/// The child's stdout, its peak resident set (KiB) and its CPU time, from `wait4`.
fn wait_with_rusage(mut child: std::process::Child) -> anyhow::Result<(Vec<u8>, i64, Duration)> {
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
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((
        out,
        usage.ru_maxrss,
        time(usage.ru_utime) + time(usage.ru_stime),
    ))
}
