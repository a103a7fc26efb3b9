//! The command line, as README.md lists it: the clap definitions here, and each command
//! family's glue in a module of its own (`run`, `check_config`, `blocks`, `feeds`,
//! `campaigns`, `address`, `history`), a thin layer over the library. [`dispatch`] runs a parsed command; `main`
//! prints what it returns, or the [`Failure`] on one line with its exit status.

mod address;
mod blocks;
mod campaigns;
mod check_config;
mod feeds;
mod history;
mod package_files;
mod run;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG, parse_duration};
use crate::feeds::{ExportFormat, Family, Format, ImportOptions};
use crate::policy::address_edit::BlockEntry;
use crate::prefix::parse_prefix;

/// `--version`: the release, the commit it was built from and the day it was built.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SINKHOLE_COMMIT"),
    ", built ",
    env!("SINKHOLE_BUILD_DATE"),
    ")"
);

/// A high-volume SMTP sinkhole for spamtrap hosts, with XDP drops for the worst clients.
#[derive(Debug, Parser)]
#[command(name = "sinkhole", version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--config FILE` and `--verbose`, taken by every subcommand.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file (TOML). Without it, /etc/sinkhole/sinkhole.toml if it exists,
    /// else the embedded defaults.
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Say (on stderr) which configuration was read.
    #[arg(short = 'v', long)]
    verbose: bool,
}

impl ConfigArg {
    /// The file to read: the one named, else [`DEFAULT_CONFIG`] if it exists; `None`: the
    /// embedded defaults. Says which with `--verbose`.
    fn path(&self) -> Option<PathBuf> {
        let path = self.config.clone().or_else(|| {
            let system = Path::new(DEFAULT_CONFIG);
            system.exists().then(|| system.to_path_buf())
        });
        if self.verbose {
            match &path {
                Some(path) => eprintln!("sinkhole: configuration {}", path.display()),
                None => eprintln!(
                    "sinkhole: configuration: the embedded defaults (no --config, no {DEFAULT_CONFIG})"
                ),
            }
        }
        path
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Replace the daemon running on the same storage (its pid in `STORAGE/sinkhole.pid`)
        /// with no gap: attach into its XDP link, listen beside it, then stop it (SIGTERM).
        #[arg(long)]
        takeover: bool,
        /// With --takeover: start the new daemon detached, return once it serves and leave it
        /// running (for a service manager's reload, `ExecReload=`).
        #[arg(long, requires = "takeover")]
        background: bool,
        /// The processes --background starts (not for use by hand).
        #[arg(
            long,
            hide = true,
            requires = "takeover",
            conflicts_with = "background"
        )]
        background_step: Option<run::BackgroundStep>,
    },
    /// Print the configuration in force as TOML: the keys that differ from the defaults.
    Config {
        /// Every key, defaults included.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the configuration (and the policy file it names); exit 2 if it is wrong.
    CheckConfig(ConfigArg),
    /// Drop a client's packets (in the pinned maps; the daemon need not run).
    Block {
        /// An address or a CIDR prefix.
        #[arg(value_parser = parse_prefix)]
        prefix: IpNet,
        /// How long the block holds (e.g. 30m, 1h, 7d); without it, until unblocked.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Why, as shown by `list`.
        #[arg(long, default_value = "manual")]
        reason: String,
        /// Block a prefix wider than /8 (IPv4) or /16 (IPv6) too; refused without it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a block.
    Unblock {
        #[arg(value_parser = parse_prefix)]
        prefix: IpNet,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Load a block list into the pinned maps: Spamhaus DROP/EDROP (`CIDR ; SBLnnn`) or one
    /// address/CIDR per line. Bad lines are named on stderr (exit 1 after loading the rest).
    Import {
        /// The list file.
        file: PathBuf,
        #[arg(long, value_enum)]
        format: Format,
        /// How long the blocks hold (e.g. 1d); without it, until unblocked.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The reason stored for every entry; default `drop:SBLnnn` (DROP) or `import:FILE`.
        #[arg(long)]
        reason: Option<String>,
        /// Load prefixes wider than /8 (IPv4) or /16 (IPv6) too; bad lines without it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write the unexpired blocks as rbldnsd datasets (`ip4set`, `ip6trie`) with the reasons as
    /// TXT, to serve them as a DNSBL zone; with `--format rbldnsd-uribl`, the URL hosts of the
    /// campaigns as a `dnset`, to serve them as a URI blocklist.
    Export {
        #[arg(long, value_enum, default_value = "rbldnsd")]
        format: ExportFormat,
        /// Write DIR/blocks4 and DIR/blocks6 (replaced atomically) and print the rbldnsd
        /// command line serving them. Without it, one family's dataset goes to stdout.
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Only this family (required when writing blocks to stdout).
        #[arg(long, value_enum)]
        family: Option<Family>,
        /// The zone name in the printed rbldnsd command line.
        #[arg(long, default_value = "blocks.sinkhole.invalid")]
        zone: String,
        /// Leave out blocks whose reason starts with PREFIX (repeatable), e.g. `dnsbl:` to
        /// share only this trap's own findings with a fleet.
        #[arg(long, value_name = "PREFIX")]
        skip_reason: Vec<String>,
        /// rbldnsd-uribl: only the URL hosts of campaigns with at least N sessions.
        #[arg(long, value_name = "N", default_value_t = 5)]
        min_sessions: u64,
        /// rbldnsd-uribl: the storage directory; default: the config's `storage.dir`.
        #[arg(long, value_name = "DIR")]
        storage: Option<PathBuf>,
        /// rbldnsd-uribl: only sessions that started within this long before now.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List blocks with their drop counters.
    List {
        #[arg(short = 'j', long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the XDP counters.
    Stats {
        #[arg(short = 'j', long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Per-address files: close, open, block, unblock, show, list.
    Address {
        #[command(subcommand)]
        command: AddressCommand,
    },
    /// Per trap address: sessions, messages, distinct clients, top signature sets, first and
    /// last seen, and its state; from the session log, rotated files included.
    Addresses {
        #[command(flatten)]
        log: LogArg,
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
        /// How many signature sets to list per address.
        #[arg(long, default_value_t = 3)]
        top: usize,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The policy: what a changed one would have done.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Group the logged sessions by signature set (a campaign each), largest first.
    Campaigns {
        /// The storage directory (`sessions.jsonl`, `maildir/`); default: the config's
        /// `storage.dir`.
        #[arg(long, value_name = "DIR")]
        storage: Option<PathBuf>,
        /// Print a JSON array instead of a table.
        #[arg(short = 'j', long)]
        json: bool,
        /// Only sessions that started within this long before now (e.g. 24h, 7d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// How many recipients, URL hosts, clients and SYN fingerprints to list per campaign.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Also write one self-contained HTML page (timelines, variants, top clients and URL
        /// hosts) to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    PackageFiles {
        /// Receives `man1/` and `completions/`.
        dir: PathBuf,
    },
}

/// Per-address files (`policy.addresses_dir`): each changed under its lock, safe while the
/// daemon runs and from several shells at once.
#[derive(Debug, Subcommand)]
pub enum AddressCommand {
    /// Close an address: its recipients are refused (550 5.1.1, or the message given).
    Close {
        address: String,
        /// The reply: a text (`550 5.7.1 TEXT`) or a whole reply line (`550 5.1.1 ...`).
        #[arg(long)]
        message: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Open an address again.
    Open {
        address: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Refuse an address's mail from a host or a sender.
    Block {
        address: String,
        #[command(flatten)]
        entry: EntryArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Take a host or a sender off an address's blocks.
    Unblock {
        address: String,
        #[command(flatten)]
        entry: EntryArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// An address's file: its state, blocks, replies and auto_close rule.
    Show {
        address: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every file of the directory.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run a changed policy over the logged sessions: how many decisions would change, per
    /// rule, with example sessions.
    Replay {
        /// The changed rule file.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The per-address files to replay with; default: the config's `policy.addresses_dir`.
        #[arg(long, value_name = "DIR")]
        addresses: Option<PathBuf>,
        #[command(flatten)]
        log: LogArg,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Which part of the session log a report reads.
#[derive(Debug, Args)]
pub struct LogArg {
    /// The storage directory (`sessions.jsonl` and its rotated files); default: the config's
    /// `storage.dir`.
    #[arg(long, value_name = "DIR")]
    pub storage: Option<PathBuf>,
    /// Only sessions that started within this long before now (e.g. 24h, 7d).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
}

/// What `address block` and `unblock` are about: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct EntryArg {
    /// An address, a CIDR prefix, or a reverse name (`.dyn.example.net`, `mx.example.net`;
    /// `ptr:` in front: not forward-confirmed).
    #[arg(long, value_name = "CIDR|NAME")]
    host: Option<String>,
    /// An address, `@domain`, `@.domain-suffix`, a glob (`*@*.biz`) or `<>`.
    #[arg(long, value_name = "PATTERN")]
    sender: Option<String>,
    /// A HELO glob (`*.example.net`).
    #[arg(long, value_name = "GLOB")]
    helo: Option<String>,
}

impl EntryArg {
    fn entry(self) -> BlockEntry {
        match (self.host, self.sender, self.helo) {
            (Some(host), _, _) => BlockEntry::Host(host),
            (None, Some(sender), _) => BlockEntry::Sender(sender),
            (None, None, helo) => BlockEntry::Helo(helo.unwrap_or_default()),
        }
    }
}

/// A command that failed: the line `main` prints after `sinkhole: `, and the exit status.
#[derive(Debug)]
pub struct Failure {
    status: u8,
    error: anyhow::Error,
}

impl Failure {
    /// The configuration (or the policy file it names) is wrong: exit 2.
    fn bad_config(error: ConfigError) -> Failure {
        Failure {
            status: 2,
            error: error.into(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.status)
    }
}

/// The command could not do what was asked: exit 1.
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure { status: 1, error }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// Runs `command`; returns the text to print on stdout (what a command streams itself, such as
/// the campaigns report, is out already).
pub fn dispatch(command: Command) -> Result<String, Failure> {
    let out = match command {
        Command::Run {
            config,
            takeover,
            background,
            background_step,
        } => {
            let path = config.path();
            let loaded = load(path.as_deref())?;
            match (background, background_step) {
                (_, Some(run::BackgroundStep::Spawn)) => run::spawn_detached(path.as_deref()),
                (_, Some(run::BackgroundStep::Daemon { middle })) => {
                    run::serve_detached(&loaded, path.as_deref(), middle)
                }
                (true, None) => run::serve_in_background(&loaded, path.as_deref()),
                (false, None) => run::serve(&loaded, path.as_deref(), takeover),
            }
        }
        Command::Config { all, config } => Ok(load(config.path().as_deref())?.to_toml(all)),
        Command::CheckConfig(arg) => {
            return check_config::check(arg.path().as_deref()).map_err(Failure::bad_config);
        }
        Command::Block {
            prefix,
            ttl,
            reason,
            force,
            config,
        } => blocks::block(
            &load(config.path().as_deref())?,
            prefix,
            ttl,
            &reason,
            force,
        ),
        Command::Unblock { prefix, config } => {
            blocks::unblock(&load(config.path().as_deref())?, prefix)
        }
        Command::List { json, config } => blocks::list(&load(config.path().as_deref())?, json),
        Command::Stats { json, config } => blocks::stats(&load(config.path().as_deref())?, json),
        Command::Import {
            file,
            format,
            ttl,
            reason,
            force,
            config,
        } => {
            let options = ImportOptions {
                format,
                ttl,
                reason: reason.as_deref(),
                force,
            };
            feeds::import(&load(config.path().as_deref())?, &file, &options)
        }
        Command::Export {
            format: ExportFormat::Rbldnsd,
            output,
            family,
            zone,
            skip_reason,
            config,
            ..
        } => feeds::export(
            &load(config.path().as_deref())?,
            output.as_deref(),
            family,
            &zone,
            &skip_reason,
        ),
        Command::Export {
            format: ExportFormat::RbldnsdUribl,
            output,
            zone,
            min_sessions,
            storage,
            since,
            config,
            ..
        } => campaigns::export_uribl(
            config.path().as_deref(),
            &campaigns::Selection { storage, since },
            output.as_deref(),
            &zone,
            min_sessions,
        ),
        Command::Address { command } => match command {
            AddressCommand::Close {
                address,
                message,
                config,
            } => address::close(&load(config.path().as_deref())?, &address, message),
            AddressCommand::Open { address, config } => {
                address::open(&load(config.path().as_deref())?, &address)
            }
            AddressCommand::Block {
                address,
                entry,
                config,
            } => address::block(
                &load(config.path().as_deref())?,
                &address,
                entry.entry(),
                true,
            ),
            AddressCommand::Unblock {
                address,
                entry,
                config,
            } => address::block(
                &load(config.path().as_deref())?,
                &address,
                entry.entry(),
                false,
            ),
            AddressCommand::Show {
                address,
                json,
                config,
            } => address::show(&load(config.path().as_deref())?, &address, json),
            AddressCommand::List { json, config } => {
                address::list(&load(config.path().as_deref())?, json)
            }
        },
        Command::Addresses {
            log,
            json,
            top,
            config,
        } => history::addresses(&load(config.path().as_deref())?, log, json, top),
        Command::Policy {
            command:
                PolicyCommand::Replay {
                    policy,
                    addresses,
                    log,
                    json,
                    config,
                },
        } => history::replay(
            &load(config.path().as_deref())?,
            &policy,
            addresses,
            log,
            json,
        ),
        // Without --storage the config is read for `storage.dir`; a wrong one is then exit 1.
        Command::Campaigns {
            storage,
            json,
            since,
            top,
            html,
            config,
        } => campaigns::report(
            config.path().as_deref(),
            &campaigns::Selection { storage, since },
            json,
            top,
            html.as_deref(),
        ),
        Command::PackageFiles { dir } => package_files::write(&dir),
    };
    Ok(out?)
}

/// The configuration at `path` (the embedded defaults without one, see [`ConfigArg::path`]);
/// exit 2 when it is wrong.
fn load(path: Option<&Path>) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::bad_config)
}
