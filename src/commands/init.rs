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
    let wrote_config = if cfg.config_file.is_none() && !args.config_out.exists() {
        std::fs::write(&args.config_out, TEMPLATE)
            .with_context(|| format!("writing {}", args.config_out.display()))?;
        true
    } else {
        false
    };
    outln!("lake ready at {}", lake.root())?;
    for def in catalog::ALL {
        outln!("  {:<16} {}", def.name, lake.table_url(def.name))?;
    }
    if wrote_config {
        outln!("wrote {} (commented template)", args.config_out.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
