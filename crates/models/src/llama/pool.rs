//! The helper threads that split the larger matrix products by rows, and a long context's
//! attention by (token, head). Between hand-offs that follow each other closely (a forward
//! pass hands out four or five per layer) a helper spins for a moment, as llama.cpp's
//! threads do, so a hand-off costs no wake-up; once the model is idle longer than [`SPIN`]
//! it waits blocked, so a node serving one model leaves the other cores alone.

use std::sync::{Arc, mpsc};

use super::qmatrix::{Activations, QMatrix};

/// Matrices at least this large are split across threads; below it, waking a helper costs
/// more than it saves.
pub(super) const SPLIT_BYTES: usize = 64 << 10;

/// Parts each thread's share of a product for several tokens is cut into, for the threads
/// to balance.
const PARTS_PER_THREAD: usize = 4;

/// Work for a helper: it gives back the parts it computed, each with its number.
pub(super) type Job = Box<dyn FnOnce() -> Parts + Send>;

/// Computed parts of a product: (part number, values).
pub(super) type Parts = Vec<(usize, Vec<f32>)>;

/// The work of one part, by its number: shared by every thread that takes parts.
pub(super) type PartFn = Arc<dyn Fn(usize) -> Vec<f32> + Send + Sync>;

/// How long a thread polls for its next message before it waits blocked: longer than the
/// gap between two products of one forward pass, far shorter than a pause between tokens
/// that matters.
const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// The next message on `rx`: polled for up to [`SPIN`], then waited for blocked. `None`
/// when the sender is gone.
fn next<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    let start = std::time::Instant::now();
    let mut polls = 0u32;
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        polls += 1;
        if polls.is_multiple_of(64) && start.elapsed() >= SPIN {
            return rx.recv().ok();
        }
        std::hint::spin_loop();
    }
}

/// Helper threads for the matrix products: each waits (polling briefly, then blocked) for
/// a block of rows to compute, and sends the values back.
pub(super) struct Pool {
    pub(super) helpers: Vec<(mpsc::SyncSender<Job>, mpsc::Receiver<Parts>)>,
}

impl Pool {
    pub(super) fn new(helpers: usize) -> Self {
        let helpers = (0..helpers)
            .filter_map(|i| {
                let (job_tx, job_rx) = mpsc::sync_channel::<Job>(1);
                let (out_tx, out_rx) = mpsc::sync_channel(1);
                std::thread::Builder::new()
                    .name(format!("sov-matvec-{}", i + 1))
                    .spawn(move || {
                        while let Some(job) = next(&job_rx) {
                            if out_tx.send(job()).is_err() {
                                break;
                            }
                        }
                    })
                    .ok()
                    .map(|_| (job_tx, out_rx))
            })
            .collect();
        Pool { helpers }
    }

    /// `W·xₜ` for every input, one output vector per input.
    pub(super) fn matmul(&self, m: &Arc<QMatrix>, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.matmul_group(std::slice::from_ref(m), xs)
            .pop()
            .unwrap_or_default()
    }

    /// `Wₖ·xₜ` for several matrices of the same input width (q, k and v; gate and up):
    /// one output per matrix per input. When the group is large enough, every matrix's
    /// rows are split between this thread and the helpers, and each helper gets its whole
    /// share in one hand-off (one wake-up per group, not per matrix).
    pub(super) fn matmul_group(&self, ms: &[Arc<QMatrix>], xs: &[Vec<f32>]) -> Vec<Vec<Vec<f32>>> {
        let acts: Arc<Vec<Vec<Activations>>> = Arc::new(
            ms.iter()
                .map(|m| xs.iter().map(|x| Activations::new(m.ty, x)).collect())
                .collect(),
        );
        let n = self.helpers.len() + 1;
        let bytes: usize = ms.iter().map(|m| m.bytes()).sum();
        let mut flat: Vec<Vec<f32>> = ms.iter().map(|m| vec![0f32; m.rows * xs.len()]).collect();
        if n == 1 || bytes < SPLIT_BYTES {
            for ((m, a), out) in ms.iter().zip(acts.iter()).zip(&mut flat) {
                m.rows_batch(a, 0..m.rows, out);
            }
        } else {
            // The rows of every matrix in parts, taken one at a time by whichever thread is
            // free (this one and the helpers): a thread that starts late or runs slower
            // (a shared core) takes fewer, so no one waits for the slowest share.
            let parts: Arc<Vec<(usize, std::ops::Range<usize>)>> = Arc::new(
                ms.iter()
                    .enumerate()
                    .flat_map(|(k, m)| {
                        // One token: a part per thread (small parts cost more than they
                        // balance); several: smaller parts.
                        let cut = if xs.len() > 1 { PARTS_PER_THREAD } else { 1 };
                        let per = m.rows.div_ceil(cut * n).max(8);
                        (0..m.rows.div_ceil(per))
                            .map(move |c| (k, c * per..((c + 1) * per).min(m.rows)))
                    })
                    .collect(),
            );
            let values = {
                let (ms, acts, parts) = (ms.to_vec(), acts.clone(), parts.clone());
                self.run_parts(
                    parts.len(),
                    Arc::new(move |t| {
                        let (k, rows) = &parts[t];
                        let a = &acts[*k];
                        let mut out = vec![0f32; rows.len() * a.len()];
                        ms[*k].rows_batch(a, rows.clone(), &mut out);
                        out
                    }),
                )
            };
            for ((k, rows), values) in parts.iter().zip(values) {
                let (m, out) = (&ms[*k], &mut flat[*k]);
                let len = rows.len();
                for x in 0..xs.len() {
                    out[x * m.rows + rows.start..x * m.rows + rows.end]
                        .copy_from_slice(&values[x * len..(x + 1) * len]);
                }
            }
        }
        ms.iter()
            .zip(flat)
            .map(|(m, f)| f.chunks_exact(m.rows).map(|c| c.to_vec()).collect())
            .collect()
    }

    /// Threads available to [`Self::run_parts`]: the helpers and the caller.
    pub(super) fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// `f(0)`, …, `f(parts − 1)`, shared between this thread and the helpers: each takes
    /// the next part nobody took yet, so a thread that starts late or runs slower (a shared
    /// core) takes fewer and no one waits for the slowest share. The values in part order.
    pub(super) fn run_parts(&self, parts: usize, f: PartFn) -> Vec<Vec<f32>> {
        if parts <= 1 || self.helpers.is_empty() {
            return (0..parts).map(|t| f(t)).collect();
        }
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let work = {
            let (f, taken) = (f.clone(), taken.clone());
            move || -> Parts {
                let mut done = Vec::new();
                loop {
                    let t = taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if t >= parts {
                        return done;
                    }
                    done.push((t, f(t)));
                }
            }
        };
        let sent: Vec<bool> = self
            .helpers
            .iter()
            .map(|(tx, _)| {
                let w = work.clone();
                tx.send(Box::new(w)).is_ok()
            })
            .collect();
        let mut done = work();
        for ((_, rx), was_sent) in self.helpers.iter().zip(sent) {
            if was_sent && let Some(d) = next(rx) {
                done.extend(d);
            }
        }
        let mut values: Vec<Option<Vec<f32>>> = vec![None; parts];
        for (t, v) in done {
            if let Some(slot) = values.get_mut(t) {
                *slot = Some(v);
            }
        }
        // Parts a helper that is gone took and never gave back: done here.
        values
            .into_iter()
            .enumerate()
            .map(|(t, v)| v.unwrap_or_else(|| f(t)))
            .collect()
    }
}
