//! `sinkhole campaigns`: the report of [`crate::campaign::report`] on stdout, as JSON or as a
//! table for people; skipped log lines as warnings on stderr.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::campaign::report::{self, Campaign, Ranked};
use crate::config::Config;
use crate::text::{self, escape};

/// `sinkhole campaigns`: the report on stdout, skipped log lines as warnings on stderr.
pub fn report(
    config: Option<&Path>,
    storage: Option<PathBuf>,
    json: bool,
    since: Option<Duration>,
    top: usize,
) -> anyhow::Result<String> {
    let storage = match storage {
        Some(dir) => dir,
        None => Config::load(config)?.storage.dir,
    };
    let options = report::Options {
        // A window reaching before 1970 is everything.
        since: since.map(|ago| SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH)),
        top,
    };
    // Each warning names its file (the log may be rotated).
    let report = report::from_storage(&storage, &options, &mut |warning| {
        eprintln!("sinkhole: warning: {warning}");
    })?;
    let mut out = io::stdout().lock();
    if json {
        text::write_json(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&report, &mut out)?;
    }
    out.flush()?;
    // Written as it was made: nothing is left to print.
    Ok(String::new())
}

/// The report as a table for people.
fn write_table(report: &[Campaign], out: &mut dyn Write) -> io::Result<()> {
    let sessions: u64 = report.iter().map(|c| c.sessions).sum();
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    writeln!(
        out,
        "{}, {}",
        plural(report.len() as u64, "campaign"),
        plural(sessions, "session")
    )?;
    let ranked = |list: &[Ranked]| {
        let parts: Vec<String> = list
            .iter()
            .map(|r| format!("{} ({})", escape(&r.name), r.count))
            .collect();
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(", ")
        }
    };
    for (i, c) in report.iter().enumerate() {
        let names = if c.signatures.is_empty() {
            "(no signatures)".to_owned()
        } else {
            c.signatures
                .iter()
                .map(|s| escape(s))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(out, "\n#{}  {names}", i + 1)?;
        writeln!(out, "    sessions    {}", c.sessions)?;
        writeln!(out, "    clients     {}", c.clients)?;
        writeln!(
            out,
            "    seen        {} .. {}",
            escape(c.first_seen.as_deref().unwrap_or("?")),
            escape(c.last_seen.as_deref().unwrap_or("?"))
        )?;
        let dnsbl: Vec<String> = c
            .dnsbl
            .iter()
            .map(|(zone, hits)| format!("{} ({hits})", escape(zone)))
            .collect();
        writeln!(
            out,
            "    dnsbl       {}",
            if dnsbl.is_empty() {
                "-".to_owned()
            } else {
                dnsbl.join(", ")
            }
        )?;
        writeln!(out, "    recipients  {}", ranked(&c.recipients))?;
        writeln!(
            out,
            "    url hosts   {} (from {} messages)",
            ranked(&c.url_hosts),
            c.messages
        )?;
        let examples: Vec<Cow<str>> = c.examples.iter().map(|e| escape(e)).collect();
        writeln!(out, "    examples    {}", examples.join(" "))?;
    }
    Ok(())
}
