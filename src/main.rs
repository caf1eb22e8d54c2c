//! The `clicklake` binary: parse arguments, run, map the outcome to a documented exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = clicklake::cli::Cli::parse();
    match clicklake::run(cli) {
        Ok(code) => code,
        Err(err) if clicklake::error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            clicklake::error::exit_code_of(&err)
        }
    }
}
