//! The `sinkhole` binary: parses the command line and hands off to the library. Errors end
//! here, as one line on stderr and a non-zero exit.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use sinkhole::cli::{Cli, Command};
use sinkhole::config::{Config, ConfigError};
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
        other => {
            eprintln!("sinkhole: {other:?} is not built yet");
            ExitCode::FAILURE
        }
    }
}

/// The configuration and the policy file it names.
fn check_config(path: Option<&Path>) -> Result<(), ConfigError> {
    let config = Config::load(path)?;
    PolicyStore::open(&config.policy)?;
    Ok(())
}
