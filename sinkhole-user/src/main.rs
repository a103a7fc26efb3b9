//! The `sinkhole` binary: parses the command line and hands off to the library
//! (`sinkhole::cli`). Errors end here, as one line on stderr and a non-zero exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use sinkhole::cli::{self, Cli};

fn main() -> ExitCode {
    sinkhole::logging::init();
    match cli::dispatch(Cli::parse().command) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("sinkhole: {failure}");
            failure.exit_code()
        }
    }
}
