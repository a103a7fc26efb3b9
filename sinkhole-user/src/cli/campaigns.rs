//! `sinkhole campaigns` (the report of [`crate::campaign::report`] on stdout, as JSON or as a
//! table for people, and with `--html FILE` as a page) and `sinkhole export --format
//! rbldnsd-uribl` (its URL hosts as a dataset); skipped log lines as warnings on stderr.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::campaign::report::{self, Campaign, Ranked, Report};
use crate::campaign::{html, uribl};
use crate::config::Config;
use crate::feeds::replace_file;
use crate::text::{self, escape};

/// Which sessions: the storage (default: the config's) and how far back.
pub struct Selection {
    pub storage: Option<PathBuf>,
    pub since: Option<Duration>,
}

impl Selection {
    /// The report over the selected sessions, listing `top` of each ranked list.
    fn report(&self, config: Option<&Path>, top: usize) -> anyhow::Result<Report> {
        let storage = match &self.storage {
            Some(dir) => dir.clone(),
            None => Config::load(config)?.storage.dir,
        };
        let options = report::Options {
            // A window reaching before 1970 is everything.
            since: self
                .since
                .map(|ago| SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH)),
            top,
        };
        // Each warning names its file (the log may be rotated).
        Ok(report::from_storage(&storage, &options, &mut |warning| {
            eprintln!("sinkhole: warning: {warning}");
        })?)
    }
}

/// `sinkhole campaigns`: the report on stdout (and as a page in `html`).
pub fn report(
    config: Option<&Path>,
    selection: &Selection,
    json: bool,
    top: usize,
    html: Option<&Path>,
) -> anyhow::Result<String> {
    let report = selection.report(config, top)?;
    if let Some(file) = html {
        let page = html::page(&report, SystemTime::now());
        replace_file(file, page.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let mut out = io::stdout().lock();
    if json {
        text::write_json(&mut out, &report.campaigns)?;
        writeln!(out)?;
    } else {
        write_table(&report, &mut out)?;
    }
    out.flush()?;
    // Written as it was made: nothing is left to print.
    Ok(String::new())
}

/// `sinkhole export --format rbldnsd-uribl`: the dataset on stdout, or into `DIR/uribl` with
/// the rbldnsd command line serving it as `zone`.
pub fn export_uribl(
    config: Option<&Path>,
    selection: &Selection,
    output: Option<&Path>,
    zone: &str,
    min_sessions: u64,
) -> anyhow::Result<String> {
    let report = selection.report(config, usize::MAX)?;
    let (dataset, hosts) = uribl::dataset(&report, min_sessions, SystemTime::now());
    let Some(dir) = output else {
        return Ok(dataset);
    };
    let path = dir.join(uribl::FILE);
    replace_file(&path, dataset.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "wrote {hosts} hosts to {} (dnset)\nserve it with (rbldnsd rereads changed files every minute):\n  rbldnsd -u rbldns -b 127.0.0.1/53 -w {} {zone}:dnset:{}\n",
        path.display(),
        dir.display(),
        uribl::FILE
    ))
}

/// The report as a table for people.
fn write_table(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    writeln!(
        out,
        "{}, {} ({} in no campaign)",
        plural(report.campaigns.len() as u64, "campaign"),
        plural(report.sessions, "session"),
        report.unclustered
    )?;
    if report.refused > 0 {
        writeln!(
            out,
            "{} not grouped: the table of features was full",
            plural(report.refused, "session")
        )?;
    }
    for (i, c) in report.campaigns.iter().enumerate() {
        campaign_table(i + 1, c, out)?;
    }
    Ok(())
}

fn campaign_table(n: usize, c: &Campaign, out: &mut dyn Write) -> io::Result<()> {
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
    let names = |set: &[String]| {
        if set.is_empty() {
            "(no signatures)".to_owned()
        } else {
            set.iter().map(|s| escape(s)).collect::<Vec<_>>().join(" ")
        }
    };
    writeln!(out, "\n#{n}  {}  {}", escape(&c.id), names(&c.signatures))?;
    writeln!(out, "    sessions    {}", c.sessions)?;
    writeln!(out, "    clients     {}", c.clients)?;
    writeln!(
        out,
        "    seen        {} .. {} ({} sessions per hour)",
        escape(c.first_seen.as_deref().unwrap_or("?")),
        escape(c.last_seen.as_deref().unwrap_or("?")),
        c.sessions_per_hour
    )?;
    for g in &c.grouped_by {
        writeln!(
            out,
            "    grouped by  {} {} ({} sessions): {}",
            g.feature,
            escape(&g.id),
            g.sessions,
            escape(&g.value)
        )?;
    }
    for v in &c.variants {
        writeln!(
            out,
            "    variant     {} ({})",
            names(&v.signatures),
            v.sessions
        )?;
    }
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
    writeln!(out, "    top clients {}", ranked(&c.top_clients))?;
    writeln!(out, "    recipients  {}", ranked(&c.recipients))?;
    writeln!(
        out,
        "    url hosts   {} (from {} messages)",
        ranked(&c.url_hosts),
        c.messages
    )?;
    writeln!(out, "    syn         {}", ranked(&c.syn))?;
    let examples: Vec<Cow<str>> = c.examples.iter().map(|e| escape(e)).collect();
    writeln!(out, "    examples    {}", examples.join(" "))?;
    Ok(())
}
