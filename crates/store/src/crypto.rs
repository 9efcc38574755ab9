//! The store's cryptography, in one room.
//!
//! - **Chunks** are sealed with XChaCha20-Poly1305 under a *convergent* key: the chunk's
//!   BLAKE3 hash, hashed again keyed with the node's secret convergence key. The same chunk added twice by
//!   this node gives the same block, so an edited file re-uses its unchanged chunks; another
//!   node (with another convergence secret) cannot confirm guesses about the content (the
//!   Tahoe-LAFS "convergence secret"). A block is `nonce (24) ‖ ciphertext ‖ tag (16)`. The
//!   plaintext is padded first (`0x80` then zeros) to a Padmé length ([`padme`]), so a
//!   block's size tells a holder the chunk's length only to within its bucket (at most 12 %
//!   more, about 1.5 % for full-size chunks). Blocks sealed before padding (`sov/chunk/1`)
//!   still open.
//! - The **object key** is random per object; it seals the object's metadata, which carries
//!   the chunk keys. Whoever holds the object key can read the object, nobody else.
//! - A **grant** wraps the object key for one reader's X25519 key: ephemeral X25519 →
//!   HKDF-SHA256 → XChaCha20-Poly1305, bound to the object id and the reader's DID. The same
//!   exchange gives the reader an Ed25519 *access key* whose public half the grant carries,
//!   so the reader can prove to a holder that a grant is its own without the grant naming
//!   it; the owner seals the reader's DID for itself under a key only it derives.

use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce, aead::AeadInOut};
use hkdf::Hkdf;
use rand::Rng as _;
use sha2::Sha256;
use sov_core::{ContentId, Did};
use sov_identity::{Keypair, key_agreement_public};
use zeroize::Zeroizing;

/// A 32-byte symmetric key, zeroised on drop.
pub type Key = Zeroizing<[u8; 32]>;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed block adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Decryption or unwrapping failed: wrong key or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthentic;

/// A fresh random key.
pub fn random_key() -> Key {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(k.as_mut());
    k
}

/// The convergent key of a chunk whose BLAKE3 hash is `chunk_hash`, for a node whose
/// convergence secret is `secret`: `BLAKE3-keyed(secret, BLAKE3(chunk))`. Without the secret the
/// key cannot be derived from the content, so other nodes cannot confirm guesses.
pub fn chunk_key(secret: &[u8; 32], chunk_hash: &[u8; 32]) -> Key {
    Zeroizing::new(*blake3::keyed_hash(secret, chunk_hash).as_bytes())
}

/// Padmé (Nikitin et al., PETS 2019): `len` rounded up so that only its top
/// ⌊log₂ E⌋ + 1 bits may be set, E = ⌊log₂ len⌋. At most 12 % more; a length leaks
/// O(log log len) bits instead of all of them.
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros();
    let s = u32::BITS - e.leading_zeros();
    let mask = (1usize << (e - s)) - 1;
    (len + mask) & !mask
}

/// The size of the block a chunk of `len` bytes seals into.
#[cfg(test)]
pub fn sealed_len(len: usize) -> usize {
    padme(len + 1) + SEAL_OVERHEAD
}

/// Seal one chunk into a block, padded (see [`padme`]). The nonce is derived from the key: a
/// convergent key is already unique to its content, so the same chunk always gives the same
/// block.
pub fn seal_chunk(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&blake3::keyed_hash(key, b"sov/chunk-nonce/1").as_bytes()[..NONCE_LEN]);
    let mut padded = Vec::with_capacity(padme(plaintext.len() + 1));
    padded.extend_from_slice(plaintext);
    padded.push(0x80);
    padded.resize(padme(plaintext.len() + 1), 0);
    seal_with_nonce(key, nonce, &padded, b"sov/chunk/2")
}

/// Open a block sealed by [`seal_chunk`] (or, unpadded, before padding existed).
pub fn open_chunk(key: &[u8; 32], block: &[u8]) -> Result<Vec<u8>, Unauthentic> {
    match open(key, block, b"sov/chunk/2") {
        Ok(mut padded) => {
            let end = padded.iter().rposition(|&b| b != 0).ok_or(Unauthentic)?;
            if padded[end] != 0x80 {
                return Err(Unauthentic);
            }
            padded.truncate(end);
            Ok(padded)
        }
        Err(Unauthentic) => open(key, block, b"sov/chunk/1"),
    }
}

/// Seal small data (metadata) under a random nonce.
pub fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    seal_with_nonce(key, nonce, plaintext, aad)
}

fn seal_with_nonce(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = XChaCha20Poly1305::new(&(*key).into())
        .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[NONCE_LEN..]).into())
        .expect("XChaCha20-Poly1305 encrypts any length sov produces");
    out.extend_from_slice(&tag);
    out
}

/// Open `nonce ‖ ciphertext ‖ tag`.
pub fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Unauthentic> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Unauthentic);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| Unauthentic)?;
    let tag = Tag::try_from(tag).map_err(|_| Unauthentic)?;
    let mut out = body.to_vec();
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt_inout_detached(&nonce, aad, out.as_mut_slice().into(), &tag)
        .map_err(|_| Unauthentic)?;
    Ok(out)
}

/// The grant format a wrapped key belongs to: the labels its keys are derived under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantVersion {
    /// `sov/grant/1`: the reader named in the clear.
    Named,
    /// `sov/grant/2`: the reader named only inside the encryption.
    Hidden,
}

/// The object key wrapped for one reader.
pub struct Wrapped {
    /// The ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// `nonce ‖ AEAD(object key) ‖ tag`.
    pub sealed: Vec<u8>,
    /// The public key of the reader's access key for this grant ([`access_key`]).
    pub access: [u8; 32],
}

/// Wrap `object_key` for `reader`, bound to `object` (a [`GrantVersion::Hidden`] grant).
pub fn wrap_key(object_key: &[u8; 32], object: &ContentId, reader: &Did) -> Wrapped {
    let reader_pub = key_agreement_public(reader);
    let eph = x25519_dalek::StaticSecret::random_from_rng(&mut rand::rng());
    let eph_pub = x25519_dalek::PublicKey::from(&eph);
    let shared = Zeroizing::new(eph.diffie_hellman(&reader_pub).to_bytes());
    let keys = GrantKeys::derive(
        &shared,
        eph_pub.as_bytes(),
        reader_pub.as_bytes(),
        object,
        GrantVersion::Hidden,
    );
    Wrapped {
        ephemeral: eph_pub.to_bytes(),
        sealed: seal(&keys.wrap, object_key, &wrap_aad(object, reader)),
        access: *keys.access().did().public_bytes(),
    }
}

/// Wrap `object_key` for `reader` the first way (tests of the upgrade from it).
#[cfg(test)]
pub(crate) fn wrap_key_named(object_key: &[u8; 32], object: &ContentId, reader: &Did) -> Wrapped {
    let reader_pub = key_agreement_public(reader);
    let eph = x25519_dalek::StaticSecret::random_from_rng(&mut rand::rng());
    let eph_pub = x25519_dalek::PublicKey::from(&eph);
    let shared = Zeroizing::new(eph.diffie_hellman(&reader_pub).to_bytes());
    let keys = GrantKeys::derive(
        &shared,
        eph_pub.as_bytes(),
        reader_pub.as_bytes(),
        object,
        GrantVersion::Named,
    );
    Wrapped {
        ephemeral: eph_pub.to_bytes(),
        sealed: seal(&keys.wrap, object_key, &wrap_aad(object, reader)),
        access: [0; 32],
    }
}

/// Unwrap an object key wrapped for `me`. For a hidden grant, failing is how a reader learns
/// that the grant is someone else's.
pub fn unwrap_key(
    me: &Keypair,
    object: &ContentId,
    ephemeral: &[u8; 32],
    sealed: &[u8],
    version: GrantVersion,
) -> Result<Key, Unauthentic> {
    let keys = GrantKeys::for_reader(me, object, ephemeral, version)?;
    let key = Zeroizing::new(open(&keys.wrap, sealed, &wrap_aad(object, &me.did()))?);
    let key: [u8; 32] = key.as_slice().try_into().map_err(|_| Unauthentic)?;
    Ok(Zeroizing::new(key))
}

/// The access key `me` derives from a hidden grant with ephemeral key `ephemeral`: its
/// public half is the grant's `access` if (and only if, but for a 2⁻²⁵⁶ chance) the grant
/// is for `me`. Signing with it proves to a holder that this peer is the grant's reader.
pub fn access_key(
    me: &Keypair,
    object: &ContentId,
    ephemeral: &[u8; 32],
) -> Result<Keypair, Unauthentic> {
    Ok(GrantKeys::for_reader(me, object, ephemeral, GrantVersion::Hidden)?.access())
}

/// The key the owner seals a hidden grant's reader DID under: `BLAKE3-keyed(secret, object)`
/// for the owner's grant-note secret.
pub fn note_key(secret: &[u8; 32], object: &ContentId) -> Key {
    Zeroizing::new(*blake3::keyed_hash(secret, &object.to_bytes()).as_bytes())
}

/// Associated data of a grant's sealed reader DID.
pub fn note_aad(object: &ContentId) -> Vec<u8> {
    let mut aad = b"sov/grant-note/2\0".to_vec();
    aad.extend_from_slice(&object.to_bytes());
    aad
}

/// What one grant's key exchange gives: the key wrapping the object key, and the seed of
/// the reader's access key (hidden grants).
struct GrantKeys {
    wrap: Key,
    access_seed: Key,
}

impl GrantKeys {
    /// HKDF-SHA256 of the X25519 secret, salted with both public keys, one label per key
    /// and grant version, each bound to the object id.
    fn derive(
        shared: &[u8; 32],
        eph: &[u8; 32],
        reader: &[u8; 32],
        object: &ContentId,
        version: GrantVersion,
    ) -> Self {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(eph);
        salt[32..].copy_from_slice(reader);
        let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
        let expand = |label: &[u8]| {
            let mut info = label.to_vec();
            info.extend_from_slice(&object.to_bytes());
            let mut k = Zeroizing::new([0u8; 32]);
            hk.expand(&info, k.as_mut())
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            k
        };
        let wrap = match version {
            GrantVersion::Named => expand(b"sov/grant/1\0"),
            GrantVersion::Hidden => expand(b"sov/grant/2\0"),
        };
        Self {
            wrap,
            access_seed: expand(b"sov/grant-access/2\0"),
        }
    }

    /// The keys `me` derives from a grant's ephemeral key.
    fn for_reader(
        me: &Keypair,
        object: &ContentId,
        ephemeral: &[u8; 32],
        version: GrantVersion,
    ) -> Result<Self, Unauthentic> {
        let my_pub = key_agreement_public(&me.did());
        let shared = me
            .x25519_secret()
            .diffie_hellman(&x25519_dalek::PublicKey::from(*ephemeral));
        // A low-order ephemeral key would make the shared secret predictable.
        if !shared.was_contributory() {
            return Err(Unauthentic);
        }
        let shared = Zeroizing::new(shared.to_bytes());
        Ok(Self::derive(
            &shared,
            ephemeral,
            my_pub.as_bytes(),
            object,
            version,
        ))
    }

    fn access(&self) -> Keypair {
        Keypair::from_seed(&self.access_seed)
    }
}

fn wrap_aad(object: &ContentId, reader: &Did) -> Vec<u8> {
    let mut aad = object.to_bytes();
    aad.extend_from_slice(reader.to_string().as_bytes());
    aad
}

/// Decrypt with a plain AEAD call (used by tests to cross-check the in-place path).
#[cfg(test)]
fn open_simple(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, Payload};
    let nonce = XNonce::try_from(&sealed[..NONCE_LEN]).ok()?;
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt(
            &nonce,
            Payload {
                msg: &sealed[NONCE_LEN..],
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn chunk_round_trip_and_convergence(data in proptest::collection::vec(any::<u8>(), 0..2048), secret in any::<[u8; 32]>()) {
            let h = *blake3::hash(&data).as_bytes();
            let k = chunk_key(&secret, &h);
            let block = seal_chunk(&k, &data);
            prop_assert_eq!(block.len(), sealed_len(data.len()));
            prop_assert_eq!(&seal_chunk(&chunk_key(&secret, &h), &data), &block);
            prop_assert_eq!(open_chunk(&k, &block).unwrap(), data.clone());
            let padded = open_simple(&k, &block, b"sov/chunk/2").unwrap();
            prop_assert_eq!(&padded[..data.len()], &data[..]);
            // A block sealed before padding (sov/chunk/1) still opens.
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&blake3::keyed_hash(&k, b"sov/chunk-nonce/1").as_bytes()[..NONCE_LEN]);
            let legacy = seal_with_nonce(&k, nonce, &data, b"sov/chunk/1");
            prop_assert_eq!(open_chunk(&k, &legacy).unwrap(), data);
        }

        #[test]
        fn padme_overhead_is_bounded_and_buckets_are_shared(len in 2usize..(1 << 21)) {
            let p = padme(len);
            prop_assert!(p >= len);
            prop_assert!((p - len) as f64 <= 0.12 * len as f64, "{} → {}", len, p);
            prop_assert_eq!(padme(p), p, "a bucket boundary is its own bucket");
        }

        #[test]
        fn altered_block_is_unauthentic(data in proptest::collection::vec(any::<u8>(), 1..256), bit in any::<usize>()) {
            let k = random_key();
            let mut block = seal_chunk(&k, &data);
            let bit = bit % (block.len() * 8);
            block[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(open_chunk(&k, &block), Err(Unauthentic));
        }
    }

    #[test]
    fn wrapped_key_opens_only_for_its_reader_and_object() {
        use GrantVersion::{Hidden, Named};
        let (alice, bob) = (Keypair::generate(), Keypair::generate());
        let object = ContentId::of(sov_core::Codec::DagCbor, b"manifest");
        let other = ContentId::of(sov_core::Codec::DagCbor, b"another");
        let key = random_key();
        let w = wrap_key(&key, &object, &bob.did());
        assert_eq!(
            *unwrap_key(&bob, &object, &w.ephemeral, &w.sealed, Hidden).unwrap(),
            *key
        );
        assert!(unwrap_key(&alice, &object, &w.ephemeral, &w.sealed, Hidden).is_err());
        assert!(unwrap_key(&bob, &other, &w.ephemeral, &w.sealed, Hidden).is_err());
        assert!(unwrap_key(&bob, &object, &[0u8; 32], &w.sealed, Hidden).is_err());
        // The versions' keys differ: a hidden grant is not opened as a named one.
        assert!(unwrap_key(&bob, &object, &w.ephemeral, &w.sealed, Named).is_err());
        let legacy = wrap_key_named(&key, &object, &bob.did());
        assert_eq!(
            *unwrap_key(&bob, &object, &legacy.ephemeral, &legacy.sealed, Named).unwrap(),
            *key
        );
        // Only the reader derives the access key the grant names.
        let access = |me: &Keypair, object| {
            *access_key(me, object, &w.ephemeral)
                .unwrap()
                .did()
                .public_bytes()
        };
        assert_eq!(access(&bob, &object), w.access);
        assert_ne!(access(&alice, &object), w.access);
        assert_ne!(access(&bob, &other), w.access);
        assert_ne!(w.access, wrap_key(&key, &object, &bob.did()).access);
    }
}
