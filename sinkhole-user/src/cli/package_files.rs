//! `sinkhole package-files DIR` (hidden): the man pages (`man1/sinkhole.1` and one per
//! subcommand) and the bash, zsh and fish completions, generated from the command line's own
//! definition so they never drift from it. `cargo xtask deb` and `deploy` install them.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

pub fn write(dir: &Path) -> anyhow::Result<String> {
    let man = dir.join("man1");
    let completions = dir.join("completions");
    for sub in [&man, &completions] {
        std::fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "sinkhole", &completions)
            .with_context(|| {
                format!("writing {shell} completions into {}", completions.display())
            })?;
    }
    Ok(format!(
        "man pages in {}, completions in {}\n",
        man.display(),
        completions.display()
    ))
}
