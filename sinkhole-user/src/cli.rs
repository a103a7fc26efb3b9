//! The command line, as the Contract lists it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::config::parse_duration;
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
    Run(ConfigArg),
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
