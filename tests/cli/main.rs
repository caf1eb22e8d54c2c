//! Integration tests: drive the `clicklake` binary through a TestContext, on a local lake and on
//! s3s-fs (a real S3-compatible server on loopback).

mod build;
mod clean;
mod context;
mod errors;
mod ingest;
mod maintain;
mod privacy;
mod recovery;
mod run;
mod sources;
mod status;
mod tables_sql;
