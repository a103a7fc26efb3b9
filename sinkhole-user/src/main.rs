//! The `sinkhole` binary: parses the command line and hands off to the library. Errors end
//! here, as one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use sinkhole::cli::{Cli, Command};
use sinkhole::config::Config;

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
        Command::Run(arg) => {
            let config = match Config::load(arg.config.as_deref()) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("sinkhole: {e}");
                    return ExitCode::from(2);
                }
            };
            match sinkhole::server::run(&config, Box::new(NothingBlocked)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sinkhole: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            eprintln!("sinkhole: {other:?} is not built yet");
            ExitCode::FAILURE
        }
    }
}

/// Until the kernel module's blocker is merged: nothing is blocked.
struct NothingBlocked;

impl sinkhole::kernel::Blocker for NothingBlocked {
    fn block(
        &mut self,
        _ip: std::net::IpAddr,
        _ttl: std::time::Duration,
        _reason: &str,
    ) -> Result<bool, sinkhole::kernel::BlockError> {
        Ok(false)
    }

    fn is_blocked(&self, _ip: std::net::IpAddr) -> bool {
        false
    }

    fn sweep(&mut self) -> Result<usize, sinkhole::kernel::BlockError> {
        Ok(0)
    }
}
