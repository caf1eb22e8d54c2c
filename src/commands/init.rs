//! `clicklake init`: create the lake and its tables (idempotent), and write a commented
//! `clicklake.toml` template when none exists.

use std::process::ExitCode;

use anyhow::Context;

use crate::catalog;
use crate::cli::InitArgs;
use crate::config::{Config, TEMPLATE};
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: &InitArgs) -> anyhow::Result<ExitCode> {
    lake.ensure_root()?;
    for def in catalog::ALL {
        catalog::ensure_table(lake, def)
            .await
            .with_context(|| format!("creating table {}", def.name))?;
    }
    // The config file named by `--config` / CLICKLAKE_CONFIG, else `--config-out`: written
    // when it does not exist yet, never overwritten.
    let config_out = cfg.config_file.as_ref().unwrap_or(&args.config_out);
    let wrote_config = if !config_out.exists() {
        if let Some(dir) = config_out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(config_out, TEMPLATE)
            .with_context(|| format!("writing {}", config_out.display()))?;
        true
    } else {
        false
    };
    outln!("lake ready at {}", lake.root())?;
    for def in catalog::ALL {
        outln!("  {:<16} {}", def.name, lake.table_url(def.name))?;
    }
    if wrote_config {
        outln!("wrote {} (commented template)", config_out.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
