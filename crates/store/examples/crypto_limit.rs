//! The physical limit for `sov data add`/`get` on this machine: the same hash and AEAD the
//! store uses (BLAKE3 of the ciphertext, XChaCha20-Poly1305), over the same bytes, in memory,
//! on one core, with nothing else (no chunking, no database, no file I/O).
//!
//! `cargo run --release -p sov-store --example crypto_limit -- [MiB]` (default 1024).

use std::time::Instant;

use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce, aead::AeadInOut};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("MiB must be a number"))
        .unwrap_or(1024);
    let chunk = 512 * 1024;
    let mut data = vec![0u8; mib << 20];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let nonce = XNonce::from([1u8; 24]);

    let t = Instant::now();
    let mut acc = 0u8;
    for c in data.chunks_mut(chunk) {
        let tag = cipher
            .encrypt_inout_detached(&nonce, b"", c.into())
            .expect("encrypts");
        acc ^= blake3::hash(c).as_bytes()[0] ^ tag[0];
    }
    let seal = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for c in data.chunks(chunk) {
        acc ^= blake3::hash(c).as_bytes()[0];
    }
    let hash_only = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for c in data.chunks_mut(chunk) {
        let tag = cipher
            .encrypt_inout_detached(&nonce, b"", c.into())
            .expect("encrypts");
        acc ^= tag[0];
    }
    let aead_only = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for c in data.chunks(chunk) {
        use sha2::Digest as _;
        acc ^= sha2::Sha256::digest(c)[0];
    }
    let sha256 = t.elapsed().as_secs_f64();

    let mb = (mib << 20) as f64 / 1e6;
    println!(
        "bytes: {mib} MiB in {} KiB chunks, one core (check byte {acc})",
        chunk / 1024
    );
    println!("BLAKE3 + XChaCha20-Poly1305: {:.0} MB/s", mb / seal);
    println!("BLAKE3 alone:                {:.0} MB/s", mb / hash_only);
    println!("XChaCha20-Poly1305 alone:    {:.0} MB/s", mb / aead_only);
    println!("SHA-256 alone (for compare): {:.0} MB/s", mb / sha256);
}
