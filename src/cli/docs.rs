//! `qfota-serve completions <SHELL>` and `qfota-serve man`: shell
//! completion scripts (clap_complete) and the manual page in roff
//! (clap_mangen), both generated from the one clap definition so they
//! never drift from the flags.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use clap_complete::Shell;

/// `qfota-serve completions <SHELL>`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, elvish, fish, powershell, zsh.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs, mut cmd: clap::Command) -> ExitCode {
    clap_complete::generate(args.shell, &mut cmd, "qfota-serve", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Prints the manual page (roff, section 1) to stdout: `qfota-serve man |
/// man -l -`, or save it as `qfota-serve.1`.
///
/// # Errors
/// stdout cannot be written.
pub fn man(cmd: clap::Command) -> std::io::Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    std::io::stdout().write_all(&page)?;
    Ok(ExitCode::SUCCESS)
}
