//! The `sinkhole` binary: parses the command line and hands off to the library. Errors end
//! here, as one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use sinkhole::cli::{Cli, Command, ConfigArg};
use sinkhole::config::Config;
use sinkhole::kernel::command;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(arg) => match Config::load(arg.config.as_deref()) {
            Ok(_) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sinkhole: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run(config) => with_config(&config, |c| {
            sinkhole::server::run(c).map(|()| String::new())
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
        Command::Attach(config) => {
            with_config(&config, |c| command::attach(c).map(|()| String::new()))
        }
    }
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
