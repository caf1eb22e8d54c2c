//! One module per subcommand. Each takes validated arguments and returns an exit code.

pub mod build;
pub mod check;
pub mod clean;
pub mod compact;
pub mod consent;
pub mod erase;
pub mod generate;
pub mod history;
pub mod ingest;
pub mod init;
pub mod run;
pub mod sql;
pub mod status;
pub mod tables;
pub mod vacuum;
