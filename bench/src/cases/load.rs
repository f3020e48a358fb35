//! Full load (`load`): `rows` rows at the source; the binary COPY pipe into the empty target
//! table, then a `full_load` task into the emptied target table with the applier running (from
//! create_task to the target having every row); best of two each.

use std::time::Instant;

use serde_json::json;

use super::Run;
use crate::report::{Figure, Unit, rate};
use crate::stack;
use crate::table;
use crate::trempy_side::{self, Applier};

const TASK: &str = "bench_load";

pub async fn run(run: &mut Run<'_>, rows: u64) {
    let stack = run.stack;
    run.say(&format!("== case load: {rows} rows"));
    run.begin_case().await;
    table::recreate(stack).await;
    table::build_backlog(stack, rows, 100_000, run.settings.sync_commit).await;
    let want = table::checksum(&stack.source).await;
    let (mut best_copy, mut best_load) = (f64::INFINITY, f64::INFINITY);
    for attempt in 1..=2 {
        stack::run(&stack.target, "TRUNCATE bench.t").await;
        let copy_s = table::copy_pipe(stack, "SELECT * FROM bench.t", "bench.t").await;
        assert_eq!(table::checksum(&stack.target).await, want, "the COPY pipe did not copy every row");
        run.say(&format!("[load] COPY pipe #{attempt}: {copy_s:.3}s"));
        best_copy = best_copy.min(copy_s);

        stack::run(&stack.target, "TRUNCATE bench.t").await;
        let mut applier = Applier::start(stack, TASK, &run.settings.applier_args);
        applier.wait_connected().await;
        let t0 = Instant::now();
        trempy_side::create_full_load_task(stack, TASK).await;
        let load_s = table::wait_converged(stack, t0, rows, &want, run.timeout(), || applier.assert_alive()).await;
        applier.stop().await;
        trempy_side::drop_task(stack, TASK).await;
        run.say(&format!("[load] TREMpy full load #{attempt}: {load_s:.3}s"));
        best_load = best_load.min(load_s);
    }
    run.check_case(&format!("load: {rows} rows")).await;
    run.figure(
        &Figure::new(
            &format!("full load: {rows} rows"),
            "TREMpy full load (create_task -> all rows in target)",
            Unit::RowsPerS,
            rate(rows, Some(best_load)),
        )
        .anchor("COPY binary pipe", rate(rows, Some(best_copy)))
        .extra(json!({"rows": rows, "trempy_s": best_load, "anchor_s": best_copy})),
    );
    run.detail(format!(
        "load: best of two runs each: TREMpy full load {best_load:.3}s, COPY binary pipe {best_copy:.3}s ({rows} rows, 5 columns)"
    ));
}
