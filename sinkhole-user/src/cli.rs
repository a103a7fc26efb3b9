//! The command line, as the Contract lists it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::config::parse_duration;
use crate::feeds::{ExportFormat, Family, Format};
use crate::prefix::parse_prefix;

/// A high-volume SMTP sinkhole for spamtrap hosts, with XDP drops for the worst clients.
#[derive(Debug, Parser)]
#[command(name = "sinkhole", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--config FILE`, taken by every subcommand.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file (TOML). Without it, the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write the unexpired blocks as rbldnsd datasets (`ip4set`, `ip6trie`) with the reasons as
    /// TXT, to serve them as a DNSBL zone.
    Export {
        #[arg(long, value_enum, default_value = "rbldnsd")]
        format: ExportFormat,
        /// Write DIR/blocks4 and DIR/blocks6 (replaced atomically) and print the rbldnsd
        /// command line serving them. Without it, one family's dataset goes to stdout.
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Only this family (required when writing to stdout).
        #[arg(long, value_enum, required_unless_present = "output")]
        family: Option<Family>,
        /// The zone name in the printed rbldnsd command line.
        #[arg(long, default_value = "blocks.sinkhole.invalid")]
        zone: String,
        /// Leave out blocks whose reason starts with PREFIX (repeatable), e.g. `dnsbl:` to
        /// share only this trap's own findings with a fleet.
        #[arg(long, value_name = "PREFIX")]
        skip_reason: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List blocks with their drop counters.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the XDP counters.
    Stats {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Group the logged sessions by signature set (a campaign each), largest first.
    Campaigns {
        /// The storage directory (`sessions.jsonl`, `maildir/`); default: the config's
        /// `storage.dir`.
        #[arg(long, value_name = "DIR")]
        storage: Option<PathBuf>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Only sessions that started within this long before now (e.g. 24h, 7d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// How many recipients and URL hosts to list per campaign.
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[command(flatten)]
        config: ConfigArg,
    },
}
