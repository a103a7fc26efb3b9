//! The standard `process_*` series (as Prometheus' own client libraries export them), read
//! from `/proc/self` at each scrape: CPU time, memory, descriptors, threads, start time.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub(super) struct Collector;

/// What `/proc/self/stat` and friends say at one moment.
struct Process {
    cpu_seconds: f64,
    virtual_bytes: i64,
    resident_bytes: i64,
    threads: i64,
    start_time_seconds: i64,
    open_fds: i64,
    max_fds: i64,
}

impl Process {
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Numbered as in proc(5), from the state (field 3) on.
        let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as i64;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<i64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_time + field(22)? / ticks as i64,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds,
            max_fds,
        })
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(p) = Process::read() else {
            tracing::warn!("metrics: cannot read /proc/self: no process_* series");
            return Ok(());
        };
        let e = &mut encoder;
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            ("process_threads", "Threads of the process", p.threads),
            (
                "process_start_time_seconds",
                "Start time of the process since the epoch, in seconds",
                p.start_time_seconds,
            ),
            ("process_open_fds", "Open file descriptors", p.open_fds),
            ("process_max_fds", "The open files limit (soft)", p.max_fds),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(e.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
