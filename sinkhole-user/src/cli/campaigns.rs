//! `sinkhole campaigns`: the report of [`crate::campaign::report`] on stdout, as JSON or as a
//! table for people; skipped log lines as warnings on stderr.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::campaign::report::{self, Campaign, Ranked};
use crate::config::Config;

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
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&report, &mut out)?;
    }
    out.flush()?;
    // Written as it was made: nothing is left to print.
    Ok(String::new())
}

/// Client-supplied text made safe for a terminal: control and bidi/zero-width format
/// characters and the backslash are escaped.
fn escape(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert!(matches!(escape("plain@example.org"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[31mb\r\n"), "a\\x1b[31mb\\x0d\\x0a");
        assert_eq!(escape("x\\y\u{202e}z\u{85}"), "x\\\\y\\u{202e}z\\u{85}");
    }
}
