//! `sinkhole addresses` and `sinkhole policy replay`: the reports of [`crate::history`] on
//! stdout, as JSON or as text for people; skipped log lines as warnings on stderr.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::LogArg;
use crate::campaign::log::StoredLog;
use crate::config::Config;
use crate::history::{addresses, replay};
use crate::policy::Policy;
use crate::policy::book::{AddressBook, AddressDir, Report};
use crate::text::{self, escape};

/// A window reaching before 1970 is everything.
fn since(ago: Option<Duration>) -> Option<SystemTime> {
    ago.map(|ago| SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH))
}

fn warn(warning: &str) {
    eprintln!("sinkhole: warning: {}", escape(warning));
}

/// The per-address files of `dir`; files that do not parse are named on stderr.
fn book(dir: &Path) -> anyhow::Result<AddressBook> {
    if dir.as_os_str().is_empty() {
        return Ok(AddressBook::default());
    }
    std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut directory = AddressDir::new(dir);
    directory.scan(true, &mut |report| {
        if let Report::Broken(why) | Report::Warning(why) = report {
            warn(&why);
        }
    });
    Ok(directory.book(&mut |w| warn(&w)))
}

/// `sinkhole addresses [--storage DIR] [--since D] [--top N] [--json]`.
pub fn addresses(config: &Config, log: LogArg, json: bool, top: usize) -> anyhow::Result<String> {
    let storage = log.storage.unwrap_or_else(|| config.storage.dir.clone());
    let options = addresses::Options {
        since: since(log.since),
        top,
    };
    let book = book(&config.policy.addresses_dir)?;
    let log = StoredLog::open(&storage, options.since)?;
    let report = addresses::report(log, &book, &options, &mut |w| warn(w))?;
    let totals = &report.totals;
    if totals.addresses_left_out + totals.clients_left_out + totals.sets_left_out > 0 {
        warn(&format!(
            "the report reached its bounds: {} recipients of addresses past {}, {} clients and {} \
             signature sets left out",
            totals.addresses_left_out,
            addresses::MAX_ADDRESSES,
            totals.clients_left_out,
            totals.sets_left_out
        ));
    }
    if json {
        return Ok(text::json_line(&report.addresses));
    }
    let mut out = format!(
        "{} address(es), {} session(s)\n",
        report.addresses.len(),
        totals.sessions
    );
    for a in &report.addresses {
        let _ = writeln!(
            out,
            "\n{}  {}\n    sessions {}  messages {}  refused {}  clients {}  seen {} .. {}",
            escape(&a.address),
            a.state.unwrap_or("(no file)"),
            a.sessions,
            a.messages,
            a.refused,
            a.clients,
            escape(a.first_seen.as_deref().unwrap_or("-")),
            escape(a.last_seen.as_deref().unwrap_or("-")),
        );
        for set in &a.campaigns {
            let names = if set.signatures.is_empty() {
                "(no signatures)".to_owned()
            } else {
                escape(&set.signatures.join(" ")).into_owned()
            };
            let _ = writeln!(out, "    {:>8}  {names}", set.sessions);
        }
    }
    Ok(out)
}

/// `sinkhole policy replay --policy FILE [--addresses DIR] [--storage DIR] [--since D]
/// [--json]`.
pub fn replay(
    config: &Config,
    policy: &Path,
    addresses_dir: Option<PathBuf>,
    log: LogArg,
    json: bool,
) -> anyhow::Result<String> {
    let storage = log.storage.unwrap_or_else(|| config.storage.dir.clone());
    let dir = addresses_dir.unwrap_or_else(|| config.policy.addresses_dir.clone());
    let setup = replay::Setup {
        policy: Policy::load(policy)?
            .with_local_domains_phase(config.policy.local_domains_phase.into()),
        book: book(&dir)?,
        reject_threshold: config.dnsbl.reject_threshold,
    };
    let options = replay::Options {
        since: since(log.since),
    };
    let log = StoredLog::open(&storage, options.since)?;
    let report = replay::replay(log, &setup, &options, &mut |w| warn(w))?;
    if json {
        return Ok(text::json_line(&report));
    }
    let mut out = format!(
        "{} session(s) replayed ({} closed at accept, not replayed): {} of {} decisions would \
         change, in {} session(s)\n",
        report.sessions,
        report.not_replayed,
        report.decisions_changed,
        report.decisions,
        report.sessions_changed
    );
    for c in &report.changes {
        let examples: Vec<_> = c.examples.iter().map(|e| escape(e)).collect();
        let _ = writeln!(
            out,
            "  {:<8}{:<34} {:>10} -> {:<10} {} decision(s) in {} session(s), e.g. {}",
            c.phase,
            escape(&c.rule),
            c.from.name(),
            c.to.name(),
            c.decisions,
            c.sessions,
            examples.join(" ")
        );
    }
    for closed in &report.auto_closed {
        let _ = writeln!(
            out,
            "  auto_close would close {} at {} ({})",
            escape(&closed.address),
            closed.at,
            escape(&closed.reason)
        );
    }
    Ok(out)
}
