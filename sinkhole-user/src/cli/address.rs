//! `sinkhole address close|open|block|unblock|show|list`: the per-address files of
//! `policy.addresses_dir`, changed under their locks (safe while the daemon runs and from
//! several shells at once) and shown. A thin layer over `policy::{book, address_edit,
//! address_io}`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::config::Config;
use crate::policy::Policy;
use crate::policy::address::AddressFile;
use crate::policy::address_edit::{self, BlockEntry, Edit};
use crate::policy::address_io::{self, FileError};
use crate::policy::auto_close::AutoClose;
use crate::policy::book::{AddressDir, Entry, Report, locate};
use crate::policy::pattern::Mailbox;
use crate::text::{self, escape};

/// `policy.addresses_dir`, or why the command cannot run.
fn directory(config: &Config) -> anyhow::Result<&Path> {
    let dir = &config.policy.addresses_dir;
    if dir.as_os_str().is_empty() {
        bail!("policy.addresses_dir is not set in the configuration");
    }
    Ok(dir)
}

fn mailbox(address: &str) -> anyhow::Result<Mailbox> {
    address
        .parse::<Mailbox>()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Why an edit was not written.
#[derive(Debug, thiserror::Error)]
enum EditFailed {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Edit(#[from] address_edit::EditError),
}

/// Applies `edit` to `address`'s file (made if it has none); the file written.
fn edit(config: &Config, address: &str, edit: &Edit) -> anyhow::Result<PathBuf> {
    let dir = directory(config)?;
    let address = mailbox(address)?;
    let (path, _) = locate(dir, &address)?;
    let origin = path.display().to_string();
    address_io::update::<EditFailed>(&path, |text| {
        Ok(address_edit::apply(text, &address, edit, &origin)?)
    })?;
    Ok(path)
}

/// `sinkhole address close ADDR [--message TEXT]`.
pub fn close(config: &Config, address: &str, message: Option<String>) -> anyhow::Result<String> {
    let who = rustix::process::getuid().as_raw();
    let close = Edit::Close {
        message,
        at: SystemTime::now(),
        reason: format!("closed by `sinkhole address close` (uid {who})"),
    };
    let path = edit(config, address, &close)?;
    Ok(format!(
        "{}: closed ({})\n",
        escape(address),
        path.display()
    ))
}

/// `sinkhole address open ADDR`.
pub fn open(config: &Config, address: &str) -> anyhow::Result<String> {
    let path = edit(config, address, &Edit::Open)?;
    Ok(format!("{}: open ({})\n", escape(address), path.display()))
}

/// `sinkhole address block ADDR --host|--sender|--helo X` (`block`), or `unblock`.
pub fn block(
    config: &Config,
    address: &str,
    entry: BlockEntry,
    block: bool,
) -> anyhow::Result<String> {
    let what = match &entry {
        BlockEntry::Host(h) => format!("host {h}"),
        BlockEntry::Sender(s) => format!("sender {s}"),
        BlockEntry::Helo(h) => format!("HELO {h}"),
    };
    let (change, done) = match block {
        true => (Edit::Block(entry), "blocks"),
        false => (Edit::Unblock(entry), "no longer blocks"),
    };
    let path = edit(config, address, &change)?;
    Ok(format!(
        "{}: {done} {} ({})\n",
        escape(address),
        escape(&what),
        path.display()
    ))
}

/// One file as `show` and `list` print it.
#[derive(Debug, Serialize)]
struct FileView {
    file: String,
    addresses: Vec<String>,
    /// Its closed addresses (all of them when the whole file is closed).
    closed: Vec<ClosedView>,
    block: BlockView,
    messages: MessagesView,
    /// The rule in force: the file's own, else the policy file's default.
    auto_close: Option<AutoCloseView>,
    /// `"file"`, `"policy"`, or null when none applies.
    auto_close_from: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ClosedView {
    address: String,
    at: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct BlockView {
    hosts: Vec<String>,
    senders: Vec<String>,
    helo: Vec<String>,
}

#[derive(Debug, Serialize)]
struct MessagesView {
    closed: Option<String>,
    host: Option<String>,
    sender: Option<String>,
    helo: Option<String>,
}

#[derive(Debug, Serialize)]
struct AutoCloseView {
    messages: Option<u32>,
    dnsbl: bool,
    signatures: Vec<Vec<&'static str>>,
    clients: Option<u32>,
    window: String,
}

impl FileView {
    fn of(entry: &Entry, policy: &Policy) -> FileView {
        let file: &AddressFile = &entry.file;
        let reply =
            |r: &Option<crate::smtp::Reply>| r.as_ref().map(|r| format!("{} {}", r.code, r.text));
        let own = file.auto_close.as_ref();
        let rule = policy.auto_close(own);
        FileView {
            file: entry.name.to_string(),
            addresses: file.addresses.iter().map(ToString::to_string).collect(),
            closed: file
                .addresses
                .iter()
                .filter_map(|address| {
                    let closure = file.closure(address)?;
                    Some(ClosedView {
                        address: address.to_string(),
                        at: closure
                            .at
                            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        reason: closure.reason.map(str::to_owned),
                    })
                })
                .collect(),
            block: BlockView {
                hosts: file.block.hosts.iter().map(ToString::to_string).collect(),
                senders: file.block.senders.iter().map(ToString::to_string).collect(),
                helo: file.block.helo.iter().map(ToString::to_string).collect(),
            },
            messages: MessagesView {
                closed: reply(&file.messages.closed),
                host: reply(&file.messages.host),
                sender: reply(&file.messages.sender),
                helo: reply(&file.messages.helo),
            },
            auto_close: rule.map(AutoCloseView::of),
            auto_close_from: rule.map(|_| if own.is_some() { "file" } else { "policy" }),
        }
    }

    /// `open`, `closed`, or `partly closed` (some of its addresses).
    fn state(&self) -> &'static str {
        match self.closed.len() {
            0 => "open",
            n if n == self.addresses.len() => "closed",
            _ => "partly closed",
        }
    }

    /// How `address` (one of the file's) is closed, if it is.
    fn closed_of(&self, address: &str) -> Option<&ClosedView> {
        self.closed.iter().find(|c| c.address == address)
    }
}

impl AutoCloseView {
    fn of(rule: &AutoClose) -> AutoCloseView {
        AutoCloseView {
            messages: rule.messages,
            dnsbl: rule.dnsbl,
            signatures: rule
                .signatures
                .iter()
                .map(|set| set.iter().map(|s| s.as_str()).collect())
                .collect(),
            clients: rule.clients,
            window: humantime::format_duration(rule.window).to_string(),
        }
    }

    /// `after 10 messages, on a DNSBL-listed client, ...`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.messages {
            parts.push(format!("after {n} messages"));
        }
        if self.dnsbl {
            parts.push("on a message from a DNSBL-listed client".to_owned());
        }
        for set in &self.signatures {
            parts.push(format!("on a session showing {}", set.join("+")));
        }
        if let Some(n) = self.clients {
            parts.push(format!("after {n} clients within {}", self.window));
        }
        parts.join(", ")
    }
}

/// The policy file's default `auto_close` comes from `policy.file`.
fn policy(config: &Config) -> anyhow::Result<Policy> {
    let file = &config.policy.file;
    if file.as_os_str().is_empty() {
        return Ok(Policy::default());
    }
    Ok(Policy::load(file)?)
}

/// Reads the directory; files that do not parse are named on stderr.
fn read_directory(dir: &Path) -> anyhow::Result<AddressDir> {
    std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?;
    let mut directory = AddressDir::new(dir);
    directory.scan(true, &mut |report| match report {
        Report::Broken(why) | Report::Warning(why) => {
            eprintln!("sinkhole: warning: {}", escape(&why));
        }
        Report::Loaded(_) | Report::Removed(_) => {}
    });
    Ok(directory)
}

/// `sinkhole address show ADDR [--json]`.
pub fn show(config: &Config, address: &str, json: bool) -> anyhow::Result<String> {
    let dir = directory(config)?;
    let address = mailbox(address)?;
    let book = read_directory(dir)?.book(&mut |w| eprintln!("sinkhole: warning: {}", escape(&w)));
    let policy = policy(config)?;
    let view = book
        .lookup(address.as_str())
        .map(|e| FileView::of(e, &policy));
    if json {
        /// The address's own state, and its file.
        #[derive(Serialize)]
        struct Shown<'a> {
            address: &'a str,
            state: &'static str,
            closed_at: Option<&'a str>,
            closed_reason: Option<&'a str>,
            #[serde(flatten)]
            file: &'a FileView,
        }
        return Ok(match &view {
            Some(file) => {
                let closed = file.closed_of(address.as_str());
                text::json_line(&Shown {
                    address: address.as_str(),
                    state: if closed.is_some() { "closed" } else { "open" },
                    closed_at: closed.and_then(|c| c.at.as_deref()),
                    closed_reason: closed.and_then(|c| c.reason.as_deref()),
                    file,
                })
            }
            // No file speaks for it: open, with no rules of its own.
            None => text::json_line(&serde_json::json!({
                "address": address.as_str(), "file": null, "state": "open"
            })),
        });
    }
    let Some(view) = view else {
        return Ok(format!(
            "{address}: no file in {} (open, no rules of its own)\n",
            dir.display()
        ));
    };
    let mut out = format!("{address}\n");
    let line = |out: &mut String, key: &str, value: &str| {
        out.push_str(&format!("    {key:<14}{}\n", escape(value)));
    };
    line(
        &mut out,
        "file",
        &dir.join(&view.file).display().to_string(),
    );
    line(&mut out, "addresses", &view.addresses.join(", "));
    let state = match view.closed_of(address.as_str()) {
        None => "open".to_owned(),
        Some(closed) => match (&closed.at, &closed.reason) {
            (Some(at), Some(why)) => format!("closed since {at} ({why})"),
            (Some(at), None) => format!("closed since {at}"),
            (None, Some(why)) => format!("closed ({why})"),
            (None, None) => "closed".to_owned(),
        },
    };
    line(&mut out, "state", &state);
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    line(&mut out, "blocked hosts", &list(&view.block.hosts));
    line(&mut out, "blocked from", &list(&view.block.senders));
    line(&mut out, "blocked HELO", &list(&view.block.helo));
    for (key, message) in [
        ("closed reply", &view.messages.closed),
        ("host reply", &view.messages.host),
        ("sender reply", &view.messages.sender),
        ("HELO reply", &view.messages.helo),
    ] {
        if let Some(message) = message {
            line(&mut out, key, message);
        }
    }
    let auto_close = match (&view.auto_close, view.auto_close_from) {
        (Some(rule), Some(from)) => format!("{} (from the {from})", rule.describe()),
        _ => "-".to_owned(),
    };
    line(&mut out, "auto_close", &auto_close);
    Ok(out)
}

/// `sinkhole address list [--json]`: every file, by name.
pub fn list(config: &Config, json: bool) -> anyhow::Result<String> {
    let dir = directory(config)?;
    let book = read_directory(dir)?.book(&mut |w| eprintln!("sinkhole: warning: {}", escape(&w)));
    let policy = policy(config)?;
    let views: Vec<FileView> = book
        .entries()
        .iter()
        .map(|e| FileView::of(e, &policy))
        .collect();
    if json {
        /// A file and its state as a whole.
        #[derive(Serialize)]
        struct Listed<'a> {
            state: &'static str,
            #[serde(flatten)]
            file: &'a FileView,
        }
        let listed: Vec<Listed> = views
            .iter()
            .map(|file| Listed {
                state: file.state(),
                file,
            })
            .collect();
        return Ok(text::json_line(&listed));
    }
    let mut out = format!("{} file(s) in {}\n", views.len(), dir.display());
    for view in &views {
        let blocks = view.block.hosts.len() + view.block.senders.len() + view.block.helo.len();
        out.push_str(&format!(
            "{:<14}{}  {}  ({} block(s){})\n",
            view.state(),
            escape(&view.file),
            escape(&view.addresses.join(", ")),
            blocks,
            if view.auto_close.is_some() {
                ", auto_close"
            } else {
                ""
            }
        ));
    }
    Ok(out)
}
