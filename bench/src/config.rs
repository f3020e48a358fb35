//! What to measure: the cases, their sizes and the writer's settings, from the command line or
//! the `BENCH_*` environment variables (`scripts/dev.sh bench` passes the environment through).

use std::num::NonZeroU64;

use clap::{Parser, ValueEnum};

/// The benchmark's cases, run in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Case {
    /// CDC catch-up: `rows` rows in 1000-row transactions.
    Batch,
    /// CDC catch-up: `txns` one-row transactions.
    Txns,
    /// Full load of `rows` rows next to a binary COPY pipe.
    Load,
    /// Steady latency: pgbench writes one row per transaction at `rate` rows/s.
    Latency,
    /// Peak memory: one transaction of `rss_rows` rows.
    Rss,
}

/// `synchronous_commit` of the session writing the catch-up backlogs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyncCommit {
    On,
    Off,
    Local,
    #[value(name = "remote_write")]
    RemoteWrite,
    #[value(name = "remote_apply")]
    RemoteApply,
}

impl SyncCommit {
    /// The setting's value as PostgreSQL spells it.
    pub fn as_sql(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Local => "local",
            Self::RemoteWrite => "remote_write",
            Self::RemoteApply => "remote_apply",
        }
    }
}

/// TREMpy's benchmark against the running stack (`scripts/dev.sh stack-up`, `. .stack/env`).
/// Prints one table, every TREMpy figure next to an anchor measured in the same run, and appends
/// one JSON line per row to `<state dir>/bench-results.jsonl`. docs/benchmarks.md explains each
/// figure.
#[derive(Debug, Parser)]
#[command(name = "trempy-bench", version)]
pub struct Args {
    /// Smoke run with small defaults (20000 / 5000 rows, 500 rows/s for 10 s, a 100000-row
    /// transaction); its numbers are not meaningful.
    #[arg(long, env = "BENCH_QUICK", value_parser = clap::builder::BoolishValueParser::new())]
    quick: bool,
    /// Cases to run, in this order (space-separated in the environment).
    #[arg(long, env = "BENCH_CASES", value_enum, value_delimiter = ' ', num_args = 1..,
          default_values_t = [Case::Batch, Case::Txns, Case::Load, Case::Latency, Case::Rss])]
    cases: Vec<Case>,
    /// Rows of the `batch` backlog and of the `load` table [default: 1000000, quick 20000].
    #[arg(long, env = "BENCH_ROWS")]
    rows: Option<NonZeroU64>,
    /// One-row transactions of the `txns` backlog [default: 100000, quick 5000].
    #[arg(long, env = "BENCH_TXNS")]
    txns: Option<NonZeroU64>,
    /// Latency writer: rows (= transactions) per second; the case runs once per rate given
    /// [default: 1000 2000, quick 500].
    #[arg(long, env = "BENCH_RATE", value_delimiter = ' ', num_args = 1..)]
    rate: Vec<NonZeroU64>,
    /// Latency writer: seconds [default: 60, quick 10].
    #[arg(long, env = "BENCH_SECONDS")]
    seconds: Option<NonZeroU64>,
    /// pgbench connections sharing the latency writer's rate.
    #[arg(long, env = "BENCH_CLIENTS", default_value = "4")]
    clients: NonZeroU64,
    /// Rows of the single transaction of the `rss` case [default: 1000000, quick 100000].
    #[arg(long, env = "BENCH_RSS_ROWS")]
    rss_rows: Option<NonZeroU64>,
    /// Seconds allowed for each wait.
    #[arg(long, env = "BENCH_TIMEOUT", default_value = "1800")]
    timeout: NonZeroU64,
    /// synchronous_commit of the session writing the catch-up backlogs and the rss transaction
    /// (100k fsyncs would dominate; the WAL is the same). The latency writer always commits with
    /// the server's default.
    #[arg(long, env = "BENCH_SYNC_COMMIT", value_enum, default_value = "off")]
    sync_commit: SyncCommit,
    /// Extra `trempy-applier run` arguments, e.g. "--prefetch 64".
    #[arg(long, env = "BENCH_APPLIER_ARGS", default_value = "", allow_hyphen_values = true)]
    applier_args: String,
}

/// The resolved settings of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub quick: bool,
    pub cases: Vec<Case>,
    pub rows: u64,
    pub txns: u64,
    pub rates: Vec<u64>,
    pub seconds: u64,
    pub clients: u64,
    pub rss_rows: u64,
    pub timeout_s: u64,
    pub sync_commit: SyncCommit,
    pub applier_args: Vec<String>,
}

impl From<Args> for Settings {
    fn from(args: Args) -> Self {
        let pick = |given: Option<NonZeroU64>, full: u64, quick: u64| {
            given.map_or(if args.quick { quick } else { full }, NonZeroU64::get)
        };
        Self {
            quick: args.quick,
            rows: pick(args.rows, 1_000_000, 20_000),
            txns: pick(args.txns, 100_000, 5_000),
            rates: if args.rate.is_empty() {
                if args.quick { vec![500] } else { vec![1_000, 2_000] }
            } else {
                args.rate.iter().map(|r| r.get()).collect()
            },
            seconds: pick(args.seconds, 60, 10),
            rss_rows: pick(args.rss_rows, 1_000_000, 100_000),
            clients: args.clients.get(),
            timeout_s: args.timeout.get(),
            sync_commit: args.sync_commit,
            applier_args: args.applier_args.split_whitespace().map(str::to_owned).collect(),
            cases: args.cases,
        }
    }
}

impl Settings {
    /// The cases as one line (for the results).
    pub fn cases_line(&self) -> String {
        self.cases
            .iter()
            .map(|c| c.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, clap::Error> {
        Args::try_parse_from(std::iter::once("trempy-bench").chain(args.iter().copied())).map(Settings::from)
    }

    #[test]
    fn defaults_are_the_full_run_and_quick_shrinks_only_what_was_not_given() {
        let full = settings(&[]).unwrap();
        assert_eq!(
            (full.rows, full.txns, full.rates.clone(), full.seconds, full.rss_rows),
            (1_000_000, 100_000, vec![1_000, 2_000], 60, 1_000_000)
        );
        assert_eq!(full.cases, [Case::Batch, Case::Txns, Case::Load, Case::Latency, Case::Rss]);
        assert_eq!(full.sync_commit, SyncCommit::Off);
        let quick = settings(&["--quick", "--rows", "777"]).unwrap();
        assert_eq!(
            (quick.rows, quick.txns, quick.rates.clone(), quick.seconds, quick.rss_rows),
            (777, 5_000, vec![500], 10, 100_000)
        );
        assert_eq!(settings(&["--rate", "1000 2000"]).unwrap().rates, [1_000, 2_000]);
        assert_eq!(settings(&["--rate", "300"]).unwrap().rates, [300]);
    }

    #[test]
    fn cases_keep_their_order_and_unknown_ones_are_refused() {
        assert_eq!(settings(&["--cases", "latency", "batch"]).unwrap().cases, [Case::Latency, Case::Batch]);
        // the environment's form: one space-separated value
        assert_eq!(settings(&["--cases", "txns load"]).unwrap().cases, [Case::Txns, Case::Load]);
        assert!(settings(&["--cases", "nope"]).is_err());
        assert_eq!(settings(&["--cases", "rss", "txns"]).unwrap().cases_line(), "rss txns");
    }

    #[test]
    fn sizes_must_be_positive_and_sync_commit_a_real_value() {
        assert!(settings(&["--rows", "0"]).is_err());
        assert!(settings(&["--timeout", "-3"]).is_err());
        assert_eq!(settings(&["--sync-commit", "remote_apply"]).unwrap().sync_commit.as_sql(), "remote_apply");
        assert!(settings(&["--sync-commit", "sometimes"]).is_err());
    }

    #[test]
    fn applier_arguments_are_split_on_whitespace() {
        assert_eq!(settings(&["--applier-args", "--prefetch 64"]).unwrap().applier_args, ["--prefetch", "64"]);
        assert!(settings(&[]).unwrap().applier_args.is_empty());
    }
}
