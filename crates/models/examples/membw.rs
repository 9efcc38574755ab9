//! Memory read bandwidth of this machine, for the bytes-per-token limit in
//! docs/BENCHMARKS.md: threads each sum their share of a 1 GiB buffer (far larger than the
//! caches), best of 5 passes; prints one JSON line.
//!
//!     cargo run --release -p sov-models --example membw -- [THREADS]

use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = f64::INFINITY;
    let mut check = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(words.div_ceil(threads))
                .map(|part| {
                    s.spawn(move || {
                        // Eight independent sums, so the adds are not the bottleneck.
                        let mut acc = [0u64; 8];
                        for c in part.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(c[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(t.elapsed().as_secs_f64());
        check = sums.iter().fold(0u64, |a, b| a.wrapping_add(*b));
    }
    println!(
        "{{\"threads\":{threads},\"bytes\":{},\"read_gb_per_s\":{:.2},\"check\":{check}}}",
        words * 8,
        (words * 8) as f64 / best / 1e9
    );
}
