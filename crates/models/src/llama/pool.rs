//! The helper threads that split the larger matrix products by rows. Between products that
//! follow each other closely (a forward pass hands out four per layer) a helper spins for a
//! moment, as llama.cpp's threads do, so a hand-off costs no wake-up; once the model is idle
//! longer than [`SPIN`] it waits blocked, so a node serving one model leaves the other cores
//! alone.

use std::sync::{Arc, mpsc};

use super::qmatrix::{Activations, QMatrix};

/// Matrices at least this large are split across threads; below it, waking a helper costs
/// more than it saves.
pub(super) const SPLIT_BYTES: usize = 64 << 10;

pub(super) type Job = Box<dyn FnOnce() -> Vec<f32> + Send>;

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
    pub(super) helpers: Vec<(mpsc::SyncSender<Job>, mpsc::Receiver<Vec<f32>>)>,
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
            // Share i of matrix k: rows part(k, i).
            let part = |rows: usize, i: usize| {
                let per = rows.div_ceil(n);
                (i * per).min(rows)..((i + 1) * per).min(rows)
            };
            let compute = |ms: &[Arc<QMatrix>], acts: &[Vec<Activations>], i: usize| -> Vec<f32> {
                let mut out = Vec::new();
                for (m, a) in ms.iter().zip(acts) {
                    let r = part(m.rows, i);
                    let at = out.len();
                    out.resize(at + r.len() * a.len(), 0.0);
                    m.rows_batch(a, r, &mut out[at..]);
                }
                out
            };
            let mut sent = vec![false; n];
            for (i, (tx, _)) in self.helpers.iter().enumerate() {
                let (mj, aj) = (ms.to_vec(), acts.clone());
                let job: Job = Box::new(move || {
                    let mut out = Vec::new();
                    for (m, a) in mj.iter().zip(aj.iter()) {
                        let per = m.rows.div_ceil(n);
                        let r = ((i + 1) * per).min(m.rows)..((i + 2) * per).min(m.rows);
                        let at = out.len();
                        out.resize(at + r.len() * a.len(), 0.0);
                        m.rows_batch(a, r, &mut out[at..]);
                    }
                    out
                });
                sent[i + 1] = tx.send(job).is_ok();
            }
            let mut shares: Vec<Vec<f32>> = Vec::with_capacity(n);
            shares.push(compute(ms, &acts, 0));
            for (i, &was_sent) in sent.iter().enumerate().skip(1) {
                let got = if was_sent {
                    next(&self.helpers[i - 1].1)
                } else {
                    None
                };
                // A helper that is gone: its share is done here.
                shares.push(got.unwrap_or_else(|| compute(ms, &acts, i)));
            }
            for (i, share) in shares.iter().enumerate() {
                let mut at = 0;
                for (m, out) in ms.iter().zip(&mut flat) {
                    let r = part(m.rows, i);
                    let len = r.len();
                    for x in 0..xs.len() {
                        out[x * m.rows + r.start..x * m.rows + r.end]
                            .copy_from_slice(&share[at + x * len..at + (x + 1) * len]);
                    }
                    at += len * xs.len();
                }
            }
        }
        ms.iter()
            .zip(flat)
            .map(|(m, f)| f.chunks_exact(m.rows).map(|c| c.to_vec()).collect())
            .collect()
    }
}
