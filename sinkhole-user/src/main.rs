//! The `sinkhole` binary: parses the command line and hands off to the library. Errors end
//! here, as one line on stderr and a non-zero exit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use sinkhole::campaign::report;
use sinkhole::cli::{Cli, Command, ConfigArg};
use sinkhole::config::{Config, ConfigError};
use sinkhole::feeds::{self, ExportFormat};
use sinkhole::kernel::command;
use sinkhole::policy::PolicyStore;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(arg) => match check_config(arg.config.as_deref()) {
            Ok(()) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sinkhole: {e}");
                ExitCode::from(2)
            }
        },
        Command::Campaigns {
            storage,
            json,
            since,
            top,
            config,
        } => match campaigns(config.config.as_deref(), storage, json, since, top) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sinkhole: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, takeover } => with_config(&config, |c| {
            sinkhole::server::run(c, takeover).map(|()| String::new())
        }),
        Command::Import {
            file,
            format,
            ttl,
            reason,
            config,
        } => with_config(&config, |c| {
            feeds::import(c, &file, format, ttl, reason.as_deref(), &mut |bad| {
                eprintln!("sinkhole: {bad}")
            })
        }),
        Command::Export {
            format: ExportFormat::Rbldnsd,
            output,
            family,
            zone,
            skip_reason,
            config,
        } => with_config(&config, |c| {
            let options = feeds::ExportOptions {
                output: output.as_deref(),
                family,
                zone: &zone,
                skip_reasons: &skip_reason,
            };
            feeds::export_rbldnsd(c, &options)
        }),
        Command::Block {
            prefix,
            ttl,
            reason,
            config,
        } => with_config(&config, |c| command::block(c, prefix, ttl, &reason)),
        Command::Unblock { prefix, config } => {
            with_config(&config, |c| command::unblock(c, prefix))
        }
        Command::List { json, config } => with_config(&config, |c| command::list(c, json)),
        Command::Stats { json, config } => with_config(&config, |c| command::stats(c, json)),
    }
}

/// The configuration, what `run` would refuse at start, and the policy file it names.
fn check_config(path: Option<&Path>) -> Result<(), ConfigError> {
    let config = Config::load_for_run(path)?;
    PolicyStore::open(&config.policy)?;
    Ok(())
}

/// `sinkhole campaigns`: the report on stdout, skipped log lines as warnings on stderr.
fn campaigns(
    config: Option<&Path>,
    storage: Option<PathBuf>,
    json: bool,
    since: Option<Duration>,
    top: usize,
) -> anyhow::Result<()> {
    let storage = match storage {
        Some(dir) => dir,
        None => Config::load(config)?.storage.dir,
    };
    let options = report::Options {
        // A window reaching before 1970 is everything.
        since: since.map(|ago| SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH)),
        top,
    };
    let report = report::from_storage(&storage, &options, &mut |warning| {
        eprintln!(
            "sinkhole: warning: {}: {warning}",
            storage.join("sessions.jsonl").display()
        );
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report::write_table(&report, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// Loads `--config` (exit 2 when it is wrong), runs `f` on it and prints what it returns
/// (exit 1 with the error on one line when it fails).
fn with_config<E: std::fmt::Display>(
    arg: &ConfigArg,
    f: impl FnOnce(&Config) -> Result<String, E>,
) -> ExitCode {
    let config = match Config::load(arg.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sinkhole: {e}");
            return ExitCode::from(2);
        }
    };
    match f(&config) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sinkhole: {e}");
            ExitCode::FAILURE
        }
    }
}
