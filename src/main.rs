//! The `clicklake` binary: parse arguments, run, map the outcome to a documented exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed pages for reuse; with the system allocator a third of a clean's time went
/// to the kernel zeroing freshly faulted pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    clicklake::error::quiet_handled_panics();
    let outcome = no_transparent_huge_pages()
        .map_err(anyhow::Error::from)
        .and_then(|()| clicklake::run(clicklake::cli::Cli::parse()));
    match outcome {
        Ok(code) => code,
        Err(err) if clicklake::error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", clicklake::error::one_line(&err));
            clicklake::error::exit_code_of(&err)
        }
    }
}

/// mimalloc asks the kernel for transparent huge pages, and the first touch of each one zeroes
/// 2 MiB: in an incremental build 40 % of the samples were the kernel clearing pages, and a
/// full build's peak RSS was 690–750 MB against 550–580 MB without them, at the same speed. So
/// this process does without (the machine's setting is left alone), unless
/// `CLICKLAKE_TRANSPARENT_HUGE_PAGES=1` keeps them, to compare (`0` is the default; anything
/// else is a configuration error).
fn no_transparent_huge_pages() -> Result<(), clicklake::error::Error> {
    const VAR: &str = "CLICKLAKE_TRANSPARENT_HUGE_PAGES";
    match std::env::var(VAR).as_deref() {
        Ok("1") => return Ok(()),
        Ok("0") | Err(std::env::VarError::NotPresent) => {}
        Ok(other) => {
            return Err(clicklake::error::Error::config(format!(
                "{VAR} must be 0 or 1, got {other:?}"
            )))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(clicklake::error::Error::config(format!(
                "{VAR} must be 0 or 1"
            )))
        }
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours; on a kernel
    // without it the call fails and nothing changes.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    Ok(())
}
