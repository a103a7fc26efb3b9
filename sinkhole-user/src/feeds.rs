//! Block lists in and out of the pinned maps.
//!
//! - `sinkhole import FILE --format drop|plain`: Spamhaus DROP in either of its syntaxes, told
//!   apart by the file's first record (JSON lines, `{"cidr":..., "sblid":...}`, as in
//!   `drop_v4.json` and `drop_v6.json`; or the text lists, `CIDR ; SBLnnn` with `;` comments),
//!   or one address/CIDR per line (`#` comments), into the block maps. Every line is judged on
//!   its own: bad ones (a prefix wider than /8 or /16 among them, unless `--force`) are named
//!   (`FILE:LINE: why`), the good ones load all the same.
//! - `sinkhole export --format rbldnsd`: the unexpired blocks as rbldnsd datasets, `ip4set` for
//!   IPv4 and `ip6trie` for IPv6 (rbldnsd keeps the families in separate dataset types), each
//!   entry answering `A 127.0.0.2` with the block's reason as its TXT. Served by rbldnsd, they
//!   make a trap's blocks a DNSBL zone other traps can score with (see `docs/fleet.md`).

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::config::Config;
use crate::kernel::{Block, KernelError, clock, maps};
use crate::prefix::{check_width, parse_prefix};
use crate::text::escape;

/// The A record every exported entry answers with (the conventional "listed").
pub const LISTED: &str = "127.0.0.2";
/// The dataset files `export --output DIR` writes.
pub const FILE_V4: &str = "blocks4";
pub const FILE_V6: &str = "blocks6";
/// Longest line `import` reads; longer ones are bad lines (and not read into memory whole).
const MAX_LINE: usize = 4096;

/// How an import file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Spamhaus DROP: JSON lines (`drop_v4.json`, `drop_v6.json`) or the text lists
    /// (`CIDR ; SBLnnn`, `;` starts a comment), told apart by the first record.
    Drop,
    /// One address or CIDR prefix per line, `#` starts a comment.
    Plain,
}

/// The syntax of one file's lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// `{"cidr":"192.0.2.0/24","sblid":"SBL1","rir":"ripencc"}` per line, ending with a
    /// `{"type":"metadata",...}` line.
    DropJson,
    /// `192.0.2.0/24 ; SBL1`, `;` comments.
    DropText,
    /// `192.0.2.0/24 # comment`.
    Plain,
}

impl Syntax {
    /// The syntax of a file in `format` whose first line that is neither blank nor a comment
    /// is `line`; `None` while there has been no such line.
    pub fn of(format: Format, line: &str) -> Option<Syntax> {
        let line = line.trim();
        match format {
            Format::Plain => Some(Syntax::Plain),
            Format::Drop if line.is_empty() || line.starts_with(';') => None,
            Format::Drop if line.starts_with('{') => Some(Syntax::DropJson),
            Format::Drop => Some(Syntax::DropText),
        }
    }
}

/// One line of Spamhaus's JSON-lines DROP.
#[derive(serde::Deserialize)]
struct DropRecord {
    cidr: Option<String>,
    sblid: Option<String>,
    /// `metadata` on the last line (timestamp, record count, terms); absent on records.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// An address family, for exporting one dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The blocks, as `ip4set`/`ip6trie` datasets.
    Rbldnsd,
    /// The URL hosts of the campaigns, as a `dnset` dataset (`crate::campaign::uribl`).
    RbldnsdUribl,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{bad} bad line(s) in {path} (named above); the good ones were loaded: {report}")]
    BadLines {
        path: PathBuf,
        bad: usize,
        report: ImportReport,
    },
}

/// One line of an import file.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub prefix: IpNet,
    /// The list's own name for the entry (DROP: the `SBLnnn` after `;`).
    pub label: Option<String>,
}

/// Reads one line: `Ok(None)` for blank lines, comments and the JSON metadata line.
pub fn parse_line(syntax: Syntax, line: &str) -> Result<Option<Entry>, String> {
    let (data, comment) = match syntax {
        Syntax::DropJson => return parse_json_line(line),
        Syntax::DropText => line.split_once(';').unwrap_or((line, "")),
        Syntax::Plain => (line.split_once('#').map_or(line, |(data, _)| data), ""),
    };
    let data = data.trim();
    if data.is_empty() {
        return Ok(None);
    }
    let prefix = parse_prefix(data).map_err(|e| e.to_string())?;
    let label = comment.split_whitespace().next().map(str::to_string);
    Ok(Some(Entry { prefix, label }))
}

fn parse_json_line(line: &str) -> Result<Option<Entry>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let record: DropRecord =
        serde_json::from_str(line).map_err(|e| format!("not a DROP JSON record: {e}"))?;
    match (record.kind.as_deref(), record.cidr) {
        (Some("metadata"), _) => Ok(None),
        (_, None) => Err("a DROP JSON record with no `cidr`".to_string()),
        (_, Some(cidr)) => Ok(Some(Entry {
            prefix: parse_prefix(&cidr).map_err(|e| e.to_string())?,
            label: record.sblid,
        })),
    }
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub added: usize,
    /// Covered by `xdp.allow`, so never dropped: not loaded.
    pub allow_listed: usize,
    pub bad: usize,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} skipped (allow-listed), {} bad",
            self.added, self.allow_listed, self.bad
        )
    }
}

/// How `sinkhole import` reads a file and what it stores.
#[derive(Clone, Debug)]
pub struct ImportOptions<'a> {
    pub format: Format,
    /// How long the blocks hold; `None`: until unblocked.
    pub ttl: Option<Duration>,
    /// The reason stored for every entry; `None`: `drop:SBLnnn` (DROP) or `import:FILE-NAME`.
    pub reason: Option<&'a str>,
    /// Load prefixes wider than /8 or /16 too (else they are bad lines, see
    /// [`check_width`]).
    pub force: bool,
}

/// `sinkhole import FILE --format F [--ttl T] [--reason R] [--force]`: loads every good line
/// into the block maps; calls `bad_line` with `FILE:LINE: why` (escaped, see [`escape`]) for each
/// bad one and then fails with [`FeedError::BadLines`] (the good lines stay loaded).
pub fn import(
    config: &Config,
    path: &Path,
    options: &ImportOptions,
    bad_line: &mut dyn FnMut(&str),
) -> Result<String, FeedError> {
    let ImportOptions {
        format,
        ttl,
        reason,
        force,
    } = *options;
    let read_error = |source| FeedError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = BufReader::new(fs::File::open(path).map_err(read_error)?);
    let mut maps = maps::open_maps(&config.xdp.pin_dir)?;
    let expires_at = clock::expiry(ttl);
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut report = ImportReport::default();
    let mut syntax = None;
    let mut buf = Vec::new();
    for number in 1.. {
        buf.clear();
        let read = file
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(read_error)?;
        if read == 0 {
            break;
        }
        let parsed = if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
            skip_rest_of_line(&mut file).map_err(read_error)?;
            Err(format!("longer than {MAX_LINE} bytes"))
        } else {
            std::str::from_utf8(&buf)
                .map_err(|_| "not UTF-8".to_string())
                .and_then(|line| {
                    syntax = syntax.or_else(|| Syntax::of(format, line));
                    syntax.map_or(Ok(None), |syntax| parse_line(syntax, line))
                })
                .and_then(|entry| match entry {
                    Some(entry) if !force => check_width(entry.prefix)
                        .map(|()| Some(entry))
                        .map_err(|e| e.to_string()),
                    entry => Ok(entry),
                })
        };
        let entry = match parsed {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(why) => {
                report.bad += 1;
                // The line is the feed's: what a terminal would act on is escaped.
                bad_line(&escape(&format!("{}:{number}: {why}", path.display())));
                continue;
            }
        };
        if config.xdp.allow.iter().any(|a| a.contains(&entry.prefix)) {
            report.allow_listed += 1;
            continue;
        }
        let text = match (reason, format, &entry.label) {
            (Some(reason), _, _) => reason.to_string(),
            (None, Format::Drop, Some(label)) => format!("drop:{label}"),
            (None, Format::Drop, None) => "drop".to_string(),
            (None, Format::Plain, _) => format!("import:{file_name}"),
        };
        maps.insert(entry.prefix, expires_at, &text)?;
        report.added += 1;
    }
    if report.bad > 0 {
        return Err(FeedError::BadLines {
            path: path.to_owned(),
            bad: report.bad,
            report,
        });
    }
    Ok(format!("imported {}: {report}\n", path.display()))
}

/// Discards input up to and including the next newline.
fn skip_rest_of_line(file: &mut impl BufRead) -> io::Result<()> {
    loop {
        let chunk = file.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                file.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                file.consume(n);
            }
        }
    }
}

/// What `sinkhole export` writes and where.
#[derive(Clone, Debug)]
pub struct ExportOptions<'a> {
    /// Write `DIR/blocks4` and `DIR/blocks6`; `None`: return one family's dataset.
    pub output: Option<&'a Path>,
    /// Only this family (the one returned when there is no `output`; default IPv4).
    pub family: Option<Family>,
    /// The zone name in the rbldnsd command line printed.
    pub zone: &'a str,
    /// Leave out blocks whose reason starts with one of these (e.g. `dnsbl:`, so that a fleet
    /// shares only first-hand blocks and no block keeps itself alive through the zones).
    pub skip_reasons: &'a [String],
}

/// `sinkhole export --format rbldnsd`: with `output`, writes `DIR/blocks4` and `DIR/blocks6`
/// (each replaced atomically, so a running rbldnsd never reads half a file) and returns what
/// was written and the rbldnsd command line serving them as `zone`; without, returns the
/// dataset of `family`.
pub fn export_rbldnsd(config: &Config, options: &ExportOptions) -> Result<String, FeedError> {
    let ExportOptions {
        output,
        family,
        zone,
        skip_reasons,
    } = *options;
    let maps = maps::open_existing_maps(&config.xdp.pin_dir)?;
    let now = clock::boot_ns();
    let mut blocks: Vec<Block> = maps
        .list()?
        .into_iter()
        .filter(|b| b.entry.is_live(now))
        .filter(|b| {
            let reason = b.reason();
            !skip_reasons
                .iter()
                .any(|skip| reason.starts_with(skip.as_str()))
        })
        .collect();
    blocks.sort_by_key(|b| b.prefix);
    let exported = SystemTime::now();
    let Some(dir) = output else {
        return Ok(dataset(&blocks, family.unwrap_or(Family::Ipv4), exported));
    };
    let families = match family {
        Some(family) => vec![family],
        None => vec![Family::Ipv4, Family::Ipv6],
    };
    let mut out = String::new();
    let mut specs = Vec::new();
    for family in families {
        let (file, kind) = match family {
            Family::Ipv4 => (FILE_V4, "ip4set"),
            Family::Ipv6 => (FILE_V6, "ip6trie"),
        };
        let path = dir.join(file);
        let text = dataset(&blocks, family, exported);
        replace_file(&path, text.as_bytes()).map_err(|source| FeedError::Write {
            path: path.clone(),
            source,
        })?;
        let entries = blocks
            .iter()
            .filter(|b| is_family(b.prefix, family))
            .count();
        let _ = writeln!(
            out,
            "wrote {entries} entries to {} ({kind})",
            path.display()
        );
        specs.push(format!("{zone}:{kind}:{file}"));
    }
    let _ = writeln!(
        out,
        "serve them with (rbldnsd rereads changed files every minute):\n  rbldnsd -u rbldns -b 127.0.0.1/53 -w {} {}",
        dir.display(),
        specs.join(" ")
    );
    Ok(out)
}

fn is_family(prefix: IpNet, family: Family) -> bool {
    matches!(
        (prefix, family),
        (IpNet::V4(_), Family::Ipv4) | (IpNet::V6(_), Family::Ipv6)
    )
}

/// The rbldnsd dataset (`ip4set` or `ip6trie` syntax, which agree for what we write) of the
/// `family` entries among `blocks`.
pub fn dataset(blocks: &[Block], family: Family, exported: SystemTime) -> String {
    let (name, kind) = match family {
        Family::Ipv4 => ("IPv4", "ip4set"),
        Family::Ipv6 => ("IPv6", "ip6trie"),
    };
    let entries: Vec<&Block> = blocks
        .iter()
        .filter(|b| is_family(b.prefix, family))
        .collect();
    let mut out = format!(
        "# sinkhole blocks, {name}: an rbldnsd {kind} dataset of {} entries, exported {}.\n\
         # Each entry answers A {LISTED} with the block's reason as TXT.\n",
        entries.len(),
        humantime::format_rfc3339_seconds(exported),
    );
    for block in entries {
        let prefix = block.prefix;
        let _ = if prefix.prefix_len() == prefix.max_prefix_len() {
            write!(out, "{}", prefix.addr())
        } else {
            write!(out, "{prefix}")
        };
        let _ = writeln!(out, " :{LISTED}:{}", txt(&block.reason()));
    }
    out
}

/// A reason as an rbldnsd TXT template: `$` would be replaced by the address queried (`$$` is
/// a dollar), and control characters could end the line.
fn txt(reason: &str) -> String {
    if reason.is_empty() {
        return "blocked by sinkhole".into();
    }
    reason
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect::<String>()
        .replace('$', "$$")
}

/// Writes `path` through a temporary file in the same directory and a rename.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sinkhole_common::BlockEntry;

    use super::*;
    use crate::kernel::maps::reason_bytes;

    fn entry(text: &str, label: Option<&str>) -> Option<Entry> {
        Some(Entry {
            prefix: text.parse().unwrap(),
            label: label.map(str::to_string),
        })
    }

    #[test]
    fn drop_lines() {
        let p = |line| parse_line(Syntax::DropText, line);
        assert_eq!(
            p("1.10.16.0/20 ; SBL256894\n"),
            Ok(entry("1.10.16.0/20", Some("SBL256894")))
        );
        assert_eq!(
            p("2001:db8::/32;SBL1"),
            Ok(entry("2001:db8::/32", Some("SBL1")))
        );
        assert_eq!(p("198.51.100.0/24"), Ok(entry("198.51.100.0/24", None)));
        assert_eq!(p("; Spamhaus DROP List 2026/11/26"), Ok(None));
        assert_eq!(p("   \r\n"), Ok(None));
        assert!(
            p("198.51.100.1/24 ; SBL2")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            p("not-a-prefix ; SBL3")
                .unwrap_err()
                .contains("not-a-prefix")
        );
    }

    #[test]
    fn plain_lines() {
        let p = |line| parse_line(Syntax::Plain, line);
        assert_eq!(p("203.0.113.7\n"), Ok(entry("203.0.113.7/32", None)));
        assert_eq!(p("2001:db8::1 # seen"), Ok(entry("2001:db8::1/128", None)));
        assert_eq!(p("# comment"), Ok(None));
        assert_eq!(p(""), Ok(None));
        assert!(p("203.0.113.7 ; x").is_err());
        assert!(p("203.0.113.7 198.51.100.1").is_err());
    }

    #[test]
    fn drop_json_lines() {
        let p = |line| parse_line(Syntax::DropJson, line);
        assert_eq!(
            p(r#"{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}"#),
            Ok(entry("1.10.16.0/20", Some("SBL256894")))
        );
        assert_eq!(
            p(r#"{"cidr":"2001:db8::/32","sblid":"SBL1","rir":"ripencc"}"#),
            Ok(entry("2001:db8::/32", Some("SBL1")))
        );
        assert_eq!(
            p(r#"{"type":"metadata","timestamp":1764892800,"size":1234,"records":2}"#),
            Ok(None)
        );
        assert_eq!(p("\n"), Ok(None));
        assert!(p(r#"{"sblid":"SBL2"}"#).unwrap_err().contains("no `cidr`"));
        assert!(
            p("1.10.16.0/20 ; SBL3")
                .unwrap_err()
                .contains("not a DROP JSON record")
        );
        assert!(
            p(r#"{"cidr":"198.51.100.1/24","sblid":"SBL4"}"#)
                .unwrap_err()
                .contains("host bits")
        );
    }

    #[test]
    fn the_first_record_tells_the_drop_syntax() {
        assert_eq!(Syntax::of(Format::Drop, "; Spamhaus DROP List"), None);
        assert_eq!(Syntax::of(Format::Drop, "  \n"), None);
        assert_eq!(
            Syntax::of(Format::Drop, r#"{"cidr":"1.10.16.0/20"}"#),
            Some(Syntax::DropJson)
        );
        assert_eq!(
            Syntax::of(Format::Drop, "1.10.16.0/20 ; SBL1"),
            Some(Syntax::DropText)
        );
        assert_eq!(Syntax::of(Format::Plain, "{"), Some(Syntax::Plain));
    }

    fn block(prefix: &str, reason: &str) -> Block {
        Block {
            prefix: prefix.parse().unwrap(),
            entry: BlockEntry {
                expires_at: 0,
                drops: 0,
                last_drop_at: 0,
                reason: reason_bytes(reason),
            },
        }
    }

    #[test]
    fn datasets_per_family() {
        let blocks = [
            block("198.51.100.0/24", "drop:SBL1"),
            block("203.0.113.7/32", "dnsbl:zen.spamhaus.org"),
            block("2001:db8::/48", "manual"),
            block("2001:db8:1::5/128", "price $5\nnext"),
            block("192.0.2.1/32", ""),
        ];
        let v4 = dataset(&blocks, Family::Ipv4, SystemTime::UNIX_EPOCH);
        let lines: Vec<&str> = v4.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "198.51.100.0/24 :127.0.0.2:drop:SBL1",
                "203.0.113.7 :127.0.0.2:dnsbl:zen.spamhaus.org",
                "192.0.2.1 :127.0.0.2:blocked by sinkhole",
            ]
        );
        assert!(v4.starts_with("# sinkhole blocks, IPv4: an rbldnsd ip4set dataset of 3 entries, exported 1970-01-01T00:00:00Z.\n"));
        let v6 = dataset(&blocks, Family::Ipv6, SystemTime::UNIX_EPOCH);
        let lines: Vec<&str> = v6.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "2001:db8::/48 :127.0.0.2:manual",
                "2001:db8:1::5 :127.0.0.2:price $$5?next",
            ]
        );
    }
}
