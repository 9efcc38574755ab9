//! Content-defined chunking with a secret gear table. FastCDC (Xia et al. 2020) cuts where
//! a rolling gear hash of the last bytes matches a mask; the gear table decides where. The
//! fastcdc crate's own seed only XORs one 64-bit value into a public table, so the cut
//! points of a known file under any seed are few guesses away. Here all 256 entries come
//! from a keyed BLAKE3 stream of the node's chunking secret: without the secret, the chunk
//! lengths of a file (which its ciphertext blocks show) cannot be predicted, so a peer
//! cannot confirm a guess of a file from them. The cutting itself is fastcdc's `cut_gear`.

use std::ops::Range;

use fastcdc::v2020::{Normalization, cut_gear, select_masks};

/// The gear tables of one node.
pub(crate) struct Gear {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl std::fmt::Debug for Gear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the table: it is the secret.
        f.write_str("Gear(..)")
    }
}

impl Drop for Gear {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.gear.zeroize();
        self.gear_ls.zeroize();
    }
}

impl Gear {
    /// The tables keyed by `secret` (a secret the node derives from its identity).
    pub(crate) fn new(secret: &[u8; 32]) -> Self {
        let mut bytes = [0u8; 256 * 8];
        let mut h = blake3::Hasher::new_keyed(secret);
        h.update(b"sov store gear table v1");
        h.finalize_xof().fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (g, b) in gear.iter_mut().zip(bytes.chunks_exact(8)) {
            *g = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        let mut gear_ls = Box::new([0u64; 256]);
        for (l, g) in gear_ls.iter_mut().zip(gear.iter()) {
            *l = g << 1;
        }
        Gear { gear, gear_ls }
    }

    /// The chunks of `buf`, in order and covering it: each `min..=max` bytes long but the
    /// last, `avg` on average (FastCDC with normalisation level 1).
    pub(crate) fn ranges(
        &self,
        buf: &[u8],
        min: usize,
        avg: usize,
        max: usize,
    ) -> Vec<Range<usize>> {
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        let mut out = Vec::with_capacity(buf.len() / avg + 1);
        let mut start = 0;
        while start < buf.len() {
            let (_, len) = cut_gear(
                &buf[start..],
                min,
                avg,
                max,
                mask_s,
                mask_l,
                mask_s << 1,
                mask_l << 1,
                &self.gear[..],
                &self.gear_ls[..],
            );
            let len = len.max(1);
            out.push(start..start + len);
            start += len;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    use super::*;

    const MIN: usize = 16 * 1024;
    const AVG: usize = 32 * 1024;
    const MAX: usize = 128 * 1024;

    fn data(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        StdRng::seed_from_u64(7).fill_bytes(&mut v);
        v
    }

    #[test]
    fn chunks_cover_the_input_within_their_bounds() {
        let buf = data(4 << 20);
        let r = Gear::new(&[1; 32]).ranges(&buf, MIN, AVG, MAX);
        assert_eq!(r.first().map(|c| c.start), Some(0));
        assert_eq!(r.last().map(|c| c.end), Some(buf.len()));
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
        for c in &r[..r.len() - 1] {
            assert!((MIN..=MAX).contains(&c.len()), "{c:?}");
        }
        let mean = buf.len() / r.len();
        assert!((AVG / 2..AVG * 2).contains(&mean), "mean chunk {mean}");
        assert!(Gear::new(&[1; 32]).ranges(&[], MIN, AVG, MAX).is_empty());
    }

    #[test]
    fn the_secret_decides_the_cuts_and_cuts_survive_an_insertion() {
        let buf = data(4 << 20);
        let a = Gear::new(&[1; 32]).ranges(&buf, MIN, AVG, MAX);
        assert_eq!(a, Gear::new(&[1; 32]).ranges(&buf, MIN, AVG, MAX));
        // Another secret: the cut points (as a set) are nearly all different.
        let b = Gear::new(&[2; 32]).ranges(&buf, MIN, AVG, MAX);
        let ends_a: std::collections::BTreeSet<usize> = a.iter().map(|c| c.end).collect();
        let shared = b.iter().filter(|c| ends_a.contains(&c.end)).count();
        assert!(shared <= 2, "{shared} of {} cuts shared", b.len());
        // Content-defined: bytes inserted at the front move the cuts by as much.
        let mut shifted = vec![9u8; 1000];
        shifted.extend_from_slice(&buf);
        let c = Gear::new(&[1; 32]).ranges(&shifted, MIN, AVG, MAX);
        let same = c
            .iter()
            .filter(|x| x.end >= 1000 && ends_a.contains(&(x.end - 1000)))
            .count();
        assert!(same + 3 >= a.len(), "{same} of {} cuts kept", a.len());
    }
}
