//! Peak memory (`rss`): one transaction of `rss_rows` rows. The task's worker `RssAnon` sampled
//! every 100 ms while it decodes and publishes; then trempy-applier started fresh on the queued
//! transaction, its `VmHWM` once the target has it; next to the `RssAnon` peaks of the native
//! walsender and apply worker, sampled the same way.

use std::time::Instant;

use serde_json::json;

use super::Run;
use crate::host;
use crate::native;
use crate::report::{Figure, Unit, mib};
use crate::sampler::RssSampler;
use crate::stack;
use crate::table;
use crate::trempy_side::{self, Applier};

const TASK: &str = "bench_rss";
const SUBSCRIPTION: &str = "bench_sub_rss";

pub async fn run(run: &mut Run<'_>) {
    let rows = run.settings.rss_rows;
    let sync_commit = run.settings.sync_commit;
    let stack = run.stack;
    let show = |kb: Option<u64>| mib(kb).map_or_else(|| "n/a".to_owned(), |m| format!("{m:.1}"));
    run.say(&format!("== case rss: one transaction of {rows} rows"));
    run.begin_case().await;

    table::recreate(stack).await;
    trempy_side::create_cdc_task(stack, TASK).await;
    let worker = trempy_side::worker_pid(stack, TASK).await.expect("the task's worker runs");
    let w_base = host::status_kb(worker, "RssAnon");
    let sampler = RssSampler::start(&[worker]);
    run.say("[rss] TREMpy: writing the transaction (task running, applier not started)");
    let t0 = Instant::now();
    table::one_transaction(stack, rows, sync_commit).await;
    let write_s = t0.elapsed().as_secs_f64();
    trempy_side::wait_published(stack, TASK, rows, 1, run.timeout()).await;
    let publish_s = t0.elapsed().as_secs_f64();
    let w_peak = sampler.stop().await.get(&worker).copied();
    if trempy_side::worker_pid(stack, TASK).await != Some(worker) {
        run.say("[rss] WARNING: the task's worker changed during the case; its peak is of the first worker only");
    }
    let want = table::checksum(&stack.source).await;
    let messages = stack::int(
        &stack.source,
        &format!("SELECT messages_published FROM trempy.status() WHERE task_name = '{TASK}'"),
    )
    .await;
    run.say(&format!(
        "[rss] TREMpy: written in {write_s:.3}s, published {publish_s:.3}s after the first insert ({messages} messages); worker RssAnon peak {} MiB; starting the applier",
        show(w_peak)
    ));
    let t0 = Instant::now();
    let mut applier = Applier::start(stack, TASK, &run.settings.applier_args);
    let sampler = RssSampler::start(&[applier.pid]);
    let drain_s = table::wait_converged(stack, t0, rows, &want, run.timeout(), || applier.assert_alive()).await;
    let a_hwm = host::status_kb(applier.pid, "VmHWM");
    let a_anon = sampler.stop().await.get(&applier.pid).copied();
    applier.stop().await;
    run.say(&format!("[rss] TREMpy: applied in {drain_s:.3}s; applier VmHWM {} MiB", show(a_hwm)));
    trempy_side::drop_task(stack, TASK).await;

    table::recreate(stack).await;
    native::create_subscription(stack, SUBSCRIPTION, true).await;
    native::wait_streaming(stack, SUBSCRIPTION).await;
    let walsender = native::walsender_pid(stack, SUBSCRIPTION).await.expect("the subscription's walsender runs");
    let apply_worker =
        native::apply_worker_pid(stack, SUBSCRIPTION).await.expect("the subscription's apply worker runs");
    let (ws_base, aw_base) = (host::status_kb(walsender, "RssAnon"), host::status_kb(apply_worker, "RssAnon"));
    let sampler = RssSampler::start(&[walsender, apply_worker]);
    run.say("[rss] native: writing the transaction (subscription streaming)");
    let t0 = Instant::now();
    table::one_transaction(stack, rows, sync_commit).await;
    assert_eq!(table::checksum(&stack.source).await, want, "the native transaction differs from the TREMpy one");
    let native_s = table::wait_converged(stack, t0, rows, &want, run.timeout(), || {}).await;
    let peaks = sampler.stop().await;
    let (ws_peak, aw_peak) = (peaks.get(&walsender).copied(), peaks.get(&apply_worker).copied());
    run.say(&format!(
        "[rss] native: applied {native_s:.3}s after the first insert; walsender RssAnon peak {} MiB, apply worker {} MiB",
        show(ws_peak),
        show(aw_peak)
    ));
    native::drop_subscription(stack, SUBSCRIPTION).await;

    let label = format!("1 txn of {rows} rows");
    run.check_case(&label).await;
    let decoding_mem = stack::text(&stack.source, "SHOW logical_decoding_work_mem").await;
    let met = a_hwm.filter(|_| rows >= 1_000_000).map(|kb| kb * 1024 < 200_000_000);
    run.figure(
        &Figure::new(&label, "peak RSS: applier (VmHWM)", Unit::Mib, mib(a_hwm))
            .anchor("native apply worker RssAnon", mib(aw_peak))
            .target("< 200 MB on 1M rows", met)
            .extra(json!({"rows": rows, "trempy_kb": a_hwm, "anchor_kb": aw_peak, "applier_rss_anon_peak_kb": a_anon})),
    );
    run.figure(
        &Figure::new(&label, "peak RssAnon: task worker", Unit::Mib, mib(w_peak))
            .anchor("native walsender RssAnon", mib(ws_peak))
            .extra(json!({"rows": rows, "trempy_kb": w_peak, "anchor_kb": ws_peak, "trempy_base_kb": w_base,
                          "anchor_base_kb": ws_base, "logical_decoding_work_mem": decoding_mem})),
    );
    run.detail(format!(
        "{label}: TREMpy written in {write_s:.3}s, published {publish_s:.3}s after the first insert as {messages} messages, applied in {drain_s:.3}s by a fresh applier; native applied {native_s:.3}s after the first insert"
    ));
    run.detail(format!(
        "{label}: applier RssAnon peak (sampled every 100 ms) {} MiB (VmHWM also counts its mapped binary and libraries)",
        show(a_anon)
    ));
    run.detail(format!(
        "{label}: RssAnon before the transaction: task worker {} MiB, walsender {} MiB, apply worker {} MiB (logical_decoding_work_mem = {decoding_mem}: decoding spills beyond it, in both)",
        show(w_base), show(ws_base), show(aw_base)
    ));
}
