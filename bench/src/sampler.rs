//! Peak anonymous memory of a few processes, sampled every 100 ms while a case runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::host::{self, Pid};

/// A running sampler; [`RssSampler::stop`] returns the peaks.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<HashMap<Pid, u64>>,
}

impl RssSampler {
    /// Samples `RssAnon` (kB) of each process every 100 ms, keeping the largest value seen.
    pub fn start(pids: &[Pid]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pids = pids.to_vec();
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut peaks: HashMap<Pid, u64> = pids.iter().map(|&p| (p, 0)).collect();
            loop {
                for (&pid, peak) in &mut peaks {
                    if let Some(kb) = host::status_kb(pid, "RssAnon") {
                        *peak = (*peak).max(kb);
                    }
                }
                if flag.load(Ordering::Relaxed) {
                    return peaks;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { stop, task }
    }

    /// Takes a last sample and returns each process's peak (0 if it was never seen).
    pub async fn stop(self) -> HashMap<Pid, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}
