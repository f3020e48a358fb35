//! `trempy-demo`: see the library's documentation.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// TREMpy's demo against the running stack (`scripts/dev.sh stack-up`, `. .stack/env`).
#[derive(Parser)]
#[command(name = "trempy-demo", version)]
struct Args {
    /// Seconds to wait for the target to converge.
    #[arg(long, env = "DEMO_TIMEOUT", default_value = "60")]
    timeout: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    trempy_demo::run(Duration::from_secs(Args::parse().timeout)).await
}
