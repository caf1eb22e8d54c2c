//! The `clicklake` binary: parse arguments, run, map the outcome to a documented exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed pages for reuse; with the system allocator a third of a clean's time went
/// to the kernel zeroing freshly faulted pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = clicklake::cli::Cli::parse();
    match clicklake::run(cli) {
        Ok(code) => code,
        Err(err) if clicklake::error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", clicklake::error::one_line(&err));
            clicklake::error::exit_code_of(&err)
        }
    }
}
