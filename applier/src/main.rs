//! `trempy-applier`: thin entry point; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    trempy_applier::cli::main(trempy_applier::cli::Cli::parse())
}
