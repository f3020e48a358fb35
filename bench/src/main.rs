//! `trempy-bench`: see the library's documentation and docs/benchmarks.md.

use std::process::ExitCode;

use clap::Parser;
use trempy_bench::config::{Args, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    trempy_bench::run(Settings::from(Args::parse())).await
}
