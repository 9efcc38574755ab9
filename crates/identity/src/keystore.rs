//! The keystore: `identity.key` in the node's home, a small JSON file, mode 0600.
//!
//! Without a passphrase it holds the hex seed. With one, the seed is sealed with
//! XChaCha20-Poly1305 under a key stretched from the passphrase by Argon2id (64 MiB, 3 passes
//! by default, RFC 9106's second recommended setting); the DID and the KDF parameters are
//! authenticated as associated data, so editing them breaks decryption. A key file that group
//! or others may read makes every load fail: such a key must be treated as leaked.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sov_core::Did;
use zeroize::Zeroizing;

use crate::Keypair;

/// The key file's name inside the node's home.
pub const FILE_NAME: &str = "identity.key";

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Parameters a file may ask for; bounded so a crafted file cannot make us allocate
    /// gigabytes or spin for minutes.
    fn check(&self) -> Result<(), Error> {
        let ok = (8..=1024 * 1024).contains(&self.m_kib)
            && (1..=16).contains(&self.t)
            && (1..=8).contains(&self.p);
        if ok {
            Ok(())
        } else {
            Err(Error::Malformed(format!(
                "Argon2id parameters out of range: {self:?}"
            )))
        }
    }
}

/// Why the key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No key file yet.
    #[error("no identity at {0}: run `sov init` first")]
    Missing(PathBuf),
    /// `init` without `--force` over an existing key.
    #[error("an identity already exists at {0} (use --force to replace it)")]
    Exists(PathBuf),
    /// Group or others can read the key file.
    #[error(
        "refusing to use {path}: its mode is {mode:03o}, readable by others (run `chmod 600 {path}`, and consider the key leaked)"
    )]
    InsecurePermissions {
        /// the key file
        path: PathBuf,
        /// its permission bits
        mode: u32,
    },
    /// The key file is sealed and no passphrase was given.
    #[error("the identity at {0} is encrypted: set SOV_PASSPHRASE or pass --passphrase-file")]
    PassphraseRequired(PathBuf),
    /// The passphrase does not open the key file (or the file was altered).
    #[error("wrong passphrase for {0} (or the key file was altered)")]
    WrongPassphrase(PathBuf),
    /// The file is not a key file this version understands.
    #[error("malformed key file: {0}")]
    Malformed(String),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// the cause
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    did: String,
    #[serde(flatten)]
    secret: Secret,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "protection", rename_all = "kebab-case")]
enum Secret {
    /// The seed in hex (wiped from memory when dropped).
    None { seed: Zeroizing<String> },
    /// Argon2id-stretched passphrase, XChaCha20-Poly1305.
    Argon2idXchacha20poly1305 {
        kdf: KdfParams,
        salt: String,
        nonce: String,
        ciphertext: String,
    },
}

/// The path of the key file in `home`.
pub fn path(home: &Path) -> PathBuf {
    home.join(FILE_NAME)
}

/// Whether `home` holds a key file.
pub fn exists(home: &Path) -> bool {
    path(home).exists()
}

/// Write `keypair` to `home`, sealed with `passphrase` if given. Without `overwrite`, an
/// existing key file is an error; with it, the existing file is first copied to a dated
/// backup beside it (see [`backup`]), whose path is returned. The file is written aside and
/// renamed into place, so a crash never leaves a half-written key.
pub fn save(
    home: &Path,
    keypair: &Keypair,
    passphrase: Option<&[u8]>,
    overwrite: bool,
) -> Result<Option<PathBuf>, Error> {
    save_with(home, keypair, passphrase, overwrite, KdfParams::default())
}

/// [`save`] with explicit Argon2id parameters.
pub fn save_with(
    home: &Path,
    keypair: &Keypair,
    passphrase: Option<&[u8]>,
    overwrite: bool,
    kdf: KdfParams,
) -> Result<Option<PathBuf>, Error> {
    let target = path(home);
    if target.exists() && !overwrite {
        return Err(Error::Exists(target));
    }
    let did = keypair.did().to_string();
    let secret = match passphrase {
        None => Secret::None {
            seed: Zeroizing::new(hex::encode(keypair.seed().as_ref())),
        },
        Some(pass) => {
            kdf.check()?;
            let mut salt = [0u8; 16];
            let mut nonce = [0u8; 24];
            rand::rng().fill_bytes(&mut salt);
            rand::rng().fill_bytes(&mut nonce);
            let key = stretch(pass, &salt, kdf)?;
            let aad = associated_data(&did, &kdf);
            let ciphertext = XChaCha20Poly1305::new(&(*key).into())
                .encrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: keypair.seed().as_ref(),
                        aad: &aad,
                    },
                )
                .map_err(|_| Error::Malformed("encryption failed".into()))?;
            Secret::Argon2idXchacha20poly1305 {
                kdf,
                salt: hex::encode(salt),
                nonce: hex::encode(nonce),
                ciphertext: hex::encode(ciphertext),
            }
        }
    };
    let file = KeyFile {
        version: 1,
        did,
        secret,
    };
    // The text holds the seed in hex when there is no passphrase: wiped after writing.
    let mut text =
        Zeroizing::new(serde_json::to_string_pretty(&file).expect("key file serialises"));
    text.push('\n');
    install(home, text.as_bytes())
}

/// Put `text` (a key file) in place in `home`, atomically, after backing up the file it
/// replaces. Returns the backup's path.
fn install(home: &Path, text: &[u8]) -> Result<Option<PathBuf>, Error> {
    let target = path(home);
    let io = |source| Error::Io {
        path: target.clone(),
        source,
    };
    fs::create_dir_all(home).map_err(io)?;
    let saved = backup(home)?;
    let tmp = home.join(format!(".{FILE_NAME}.tmp"));
    let _ = fs::remove_file(&tmp);
    {
        let mut f = open_private(&tmp).map_err(io)?;
        f.write_all(text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, &target).map_err(io)?;
    Ok(saved)
}

/// Copy the key file of `home`, as it is (sealed or not), to a new file beside it named by
/// the time, `identity.key.YYYYMMDDTHHMMSSZ.bak`, mode 0600. `None` when there is no key
/// file. Every replacement of a key calls this first, so no command loses an identity.
pub fn backup(home: &Path) -> Result<Option<PathBuf>, Error> {
    let target = path(home);
    let bytes = match fs::read(&target) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: target,
                source,
            });
        }
    };
    let stamp = utc_stamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    for n in 0..1000u32 {
        let name = match n {
            0 => format!("{FILE_NAME}.{stamp}.bak"),
            n => format!("{FILE_NAME}.{stamp}-{n}.bak"),
        };
        let dest = home.join(name);
        let mut f = match open_private(&dest) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(Error::Io { path: dest, source }),
        };
        let io = |source| Error::Io {
            path: dest.clone(),
            source,
        };
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        return Ok(Some(dest));
    }
    Err(Error::Malformed(format!(
        "too many backups named {FILE_NAME}.{stamp}*.bak"
    )))
}

/// Copy the key file of `home`, as it is (sealed stays sealed), to `dest`, a new file of
/// mode 0600 (an existing `dest` is never overwritten).
pub fn export(home: &Path, dest: &Path) -> Result<Did, Error> {
    let file = read(home)?;
    let did = parse_did(&file)?;
    let bytes = Zeroizing::new(fs::read(path(home)).map_err(|source| Error::Io {
        path: path(home),
        source,
    })?);
    let io = |source| Error::Io {
        path: dest.to_owned(),
        source,
    };
    let mut f = open_private(dest).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(did)
}

/// The DID of the key file at `file` (one written by [`export`] or a backup), checked to be a
/// key file this version reads.
pub fn peek_file(file: &Path) -> Result<Did, Error> {
    parse_did(&read_file(file, false)?)
}

/// Install the key file at `file` as the identity of `home` (the file's bytes as they are;
/// a sealed one stays sealed and needs its passphrase to load). With `overwrite`, an
/// existing identity is backed up first; without, it is an error. Returns the DID and the
/// backup's path.
pub fn import(home: &Path, file: &Path, overwrite: bool) -> Result<(Did, Option<PathBuf>), Error> {
    let parsed = read_file(file, false)?;
    let did = parse_did(&parsed)?;
    if let Secret::None { seed } = &parsed.secret
        && Keypair::from_seed(&*decode_seed(seed)?).did() != did
    {
        return Err(Error::Malformed(format!(
            "the key in {} does not match the DID recorded beside it",
            file.display()
        )));
    }
    if exists(home) && !overwrite {
        return Err(Error::Exists(path(home)));
    }
    let bytes = Zeroizing::new(fs::read(file).map_err(|source| Error::Io {
        path: file.to_owned(),
        source,
    })?);
    let saved = install(home, &bytes)?;
    Ok((did, saved))
}

/// Seal the identity of `home` with `new` (a passphrase), or unseal it (`None`), keeping the
/// same key: it is opened with `old` first, and the previous file is backed up. Returns the
/// backup's path.
pub fn reseal(
    home: &Path,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
) -> Result<Option<PathBuf>, Error> {
    let keypair = load(home, old)?;
    save(home, &keypair, new, true)
}

/// `secs` since the Unix epoch as `YYYYMMDDTHHMMSSZ` (UTC): RFC 3339 without separators,
/// safe in a file name.
fn utc_stamp(secs: u64) -> String {
    sov_core::rfc3339(secs).replace(['-', ':'], "")
}

fn parse_did(file: &KeyFile) -> Result<Did, Error> {
    file.did
        .parse()
        .map_err(|e| Error::Malformed(format!("did: {e}")))
}

/// The DID recorded in the key file, without opening it (no passphrase needed).
/// Still refuses a key file that others can read.
pub fn peek_did(home: &Path) -> Result<Did, Error> {
    parse_did(&read(home)?)
}

/// Whether the key file in `home` is sealed with a passphrase.
pub fn is_encrypted(home: &Path) -> Result<bool, Error> {
    Ok(matches!(
        read(home)?.secret,
        Secret::Argon2idXchacha20poly1305 { .. }
    ))
}

/// Load the keypair in `home`, opening it with `passphrase` if it is sealed.
pub fn load(home: &Path, passphrase: Option<&[u8]>) -> Result<Keypair, Error> {
    let target = path(home);
    let file = read(home)?;
    let seed: Zeroizing<[u8; 32]> = match &file.secret {
        Secret::None { seed } => decode_seed(seed)?,
        Secret::Argon2idXchacha20poly1305 {
            kdf,
            salt,
            nonce,
            ciphertext,
        } => {
            let pass = passphrase.ok_or_else(|| Error::PassphraseRequired(target.clone()))?;
            kdf.check()?;
            let salt = hex_field("salt", salt)?;
            let nonce: [u8; 24] = hex_field("nonce", nonce)?
                .try_into()
                .map_err(|_| Error::Malformed("nonce must be 24 bytes".into()))?;
            let ciphertext = hex_field("ciphertext", ciphertext)?;
            let key = stretch(pass, &salt, *kdf)?;
            let plain = Zeroizing::new(
                XChaCha20Poly1305::new(&(*key).into())
                    .decrypt(
                        &XNonce::from(nonce),
                        Payload {
                            msg: &ciphertext,
                            aad: &associated_data(&file.did, kdf),
                        },
                    )
                    .map_err(|_| Error::WrongPassphrase(target.clone()))?,
            );
            let seed: [u8; 32] = plain
                .as_slice()
                .try_into()
                .map_err(|_| Error::Malformed("sealed seed must be 32 bytes".into()))?;
            Zeroizing::new(seed)
        }
    };
    let keypair = Keypair::from_seed(&seed);
    if keypair.did().to_string() != file.did {
        return Err(Error::Malformed(format!(
            "the key in {} does not match the DID recorded beside it",
            target.display()
        )));
    }
    Ok(keypair)
}

/// Read a 64-hex-character seed file (for `sov init --import-seed`).
pub fn read_seed_file(file: &Path) -> Result<Keypair, Error> {
    let text = Zeroizing::new(fs::read_to_string(file).map_err(|source| Error::Io {
        path: file.to_owned(),
        source,
    })?);
    Ok(Keypair::from_seed(&*decode_seed(text.trim())?))
}

fn decode_seed(hex_seed: &str) -> Result<Zeroizing<[u8; 32]>, Error> {
    let mut seed = Zeroizing::new([0u8; 32]);
    if hex_seed.len() != 64 {
        return Err(Error::Malformed(format!(
            "a seed is 64 hex characters (32 bytes), found {} characters",
            hex_seed.len()
        )));
    }
    hex::decode_to_slice(hex_seed, seed.as_mut())
        .map_err(|e| Error::Malformed(format!("seed is not hex: {e}")))?;
    Ok(seed)
}

fn hex_field(name: &str, value: &str) -> Result<Vec<u8>, Error> {
    hex::decode(value).map_err(|e| Error::Malformed(format!("{name} is not hex: {e}")))
}

fn read(home: &Path) -> Result<KeyFile, Error> {
    read_file(&path(home), true)
}

/// Read and parse the key file at `target`; `private`: refuse one that others may read.
fn read_file(target: &Path, private: bool) -> Result<KeyFile, Error> {
    let target = target.to_owned();
    let meta = match fs::metadata(&target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::Missing(target)),
        Err(source) => {
            return Err(Error::Io {
                path: target,
                source,
            });
        }
    };
    if private {
        check_private(&target, &meta)?;
    }
    // The file is tiny; anything larger is not ours.
    if meta.len() > 64 * 1024 {
        return Err(Error::Malformed("key file is too large".into()));
    }
    let text = Zeroizing::new(fs::read_to_string(&target).map_err(|source| Error::Io {
        path: target.clone(),
        source,
    })?);
    let file: KeyFile =
        serde_json::from_str(text.as_str()).map_err(|e| Error::Malformed(e.to_string()))?;
    if file.version != 1 {
        return Err(Error::Malformed(format!(
            "key file version {} is not supported",
            file.version
        )));
    }
    Ok(file)
}

fn stretch(pass: &[u8], salt: &[u8], kdf: KdfParams) -> Result<Zeroizing<[u8; 32]>, Error> {
    let params = argon2::Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32))
        .map_err(|e| Error::Malformed(format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass, salt, key.as_mut())
        .map_err(|e| Error::Malformed(format!("Argon2id: {e}")))?;
    Ok(key)
}

fn associated_data(did: &str, kdf: &KdfParams) -> Vec<u8> {
    format!(
        "sov-identity-v1\0{did}\0argon2id m={} t={} p={}",
        kdf.m_kib, kdf.t, kdf.p
    )
    .into_bytes()
}

#[cfg(unix)]
fn open_private(p: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
}

#[cfg(not(unix))]
fn open_private(p: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(p)
}

#[cfg(unix)]
fn check_private(p: &Path, meta: &fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecurePermissions {
            path: p.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: &fs::Metadata) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so tests do not spend seconds in Argon2.
    const FAST: KdfParams = KdfParams {
        m_kib: 256,
        t: 1,
        p: 1,
    };

    #[test]
    fn plain_round_trip_and_mode() {
        let home = tempfile::tempdir().unwrap();
        let k = Keypair::generate();
        save(home.path(), &k, None, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(path(home.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load(home.path(), None).unwrap().did(), k.did());
        assert!(!is_encrypted(home.path()).unwrap());
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_796_205_723), "20261202T100203Z");
    }

    /// Finding 2 of issue 14: replacing, sealing or importing a key never loses the old one.
    #[test]
    fn every_replacement_keeps_a_backup_and_seal_keeps_the_key() {
        let home = tempfile::tempdir().unwrap();
        let k = Keypair::generate();
        assert_eq!(save(home.path(), &k, None, false).unwrap(), None);
        let before = fs::read(path(home.path())).unwrap();

        // Sealing keeps the same key; the unsealed file is kept as a backup (0600).
        let saved = save_with(home.path(), &k, Some(b"pw"), true, FAST).unwrap();
        let saved = saved.expect("a backup");
        assert_eq!(fs::read(&saved).unwrap(), before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&saved).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load(home.path(), Some(b"pw")).unwrap().did(), k.did());
        assert!(reseal(home.path(), Some(b"wrong"), None).is_err());
        assert!(reseal(home.path(), Some(b"pw"), None).unwrap().is_some());
        assert_eq!(load(home.path(), None).unwrap().did(), k.did());

        // A new key over the old one: the old one is in a backup and can be imported back.
        let other = Keypair::generate();
        let saved = save(home.path(), &other, None, true).unwrap().unwrap();
        assert_eq!(peek_file(&saved).unwrap(), k.did());
        let exported = home.path().join("exported.key");
        assert_eq!(export(home.path(), &exported).unwrap(), other.did());
        assert!(
            export(home.path(), &exported).is_err(),
            "export never overwrites"
        );
        assert!(matches!(
            import(home.path(), &saved, false),
            Err(Error::Exists(_))
        ));
        let (did, again) = import(home.path(), &saved, true).unwrap();
        assert_eq!(did, k.did());
        assert_eq!(peek_file(&again.unwrap()).unwrap(), other.did());
        assert_eq!(load(home.path(), None).unwrap().did(), k.did());

        // A file that is not a key file, or whose seed does not match its DID, is refused.
        let bad = home.path().join("bad.key");
        fs::write(&bad, b"{}").unwrap();
        assert!(import(home.path(), &bad, true).is_err());
        let text = fs::read_to_string(&saved).unwrap();
        let forged = text.replace(&k.did().to_string(), &other.did().to_string());
        fs::write(&bad, forged).unwrap();
        assert!(import(home.path(), &bad, true).is_err());
        assert_eq!(load(home.path(), None).unwrap().did(), k.did());
    }

    #[test]
    fn refuses_overwrite_without_force() {
        let home = tempfile::tempdir().unwrap();
        let first = Keypair::generate();
        save(home.path(), &first, None, false).unwrap();
        let err = save(home.path(), &Keypair::generate(), None, false).unwrap_err();
        assert!(matches!(err, Error::Exists(_)));
        assert_eq!(load(home.path(), None).unwrap().did(), first.did());
        let second = Keypair::generate();
        save(home.path(), &second, None, true).unwrap();
        assert_eq!(load(home.path(), None).unwrap().did(), second.did());
    }

    #[test]
    fn sealed_needs_the_right_passphrase() {
        let home = tempfile::tempdir().unwrap();
        let k = Keypair::generate();
        save_with(home.path(), &k, Some(b"correct horse"), false, FAST).unwrap();
        let text = fs::read_to_string(path(home.path())).unwrap();
        assert!(!text.contains(&hex::encode(k.seed().as_ref())));
        assert!(matches!(
            load(home.path(), None),
            Err(Error::PassphraseRequired(_))
        ));
        assert!(matches!(
            load(home.path(), Some(b"wrong")),
            Err(Error::WrongPassphrase(_))
        ));
        assert_eq!(
            load(home.path(), Some(b"correct horse")).unwrap().did(),
            k.did()
        );
        assert_eq!(peek_did(home.path()).unwrap(), k.did());
    }

    #[test]
    fn edited_kdf_parameters_break_decryption() {
        let home = tempfile::tempdir().unwrap();
        save_with(home.path(), &Keypair::generate(), Some(b"pw"), false, FAST).unwrap();
        let p = path(home.path());
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("\"t\": 1", "\"t\": 2");
        fs::remove_file(&p).unwrap();
        open_private(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(matches!(
            load(home.path(), Some(b"pw")),
            Err(Error::WrongPassphrase(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_key_others_can_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let home = tempfile::tempdir().unwrap();
        save(home.path(), &Keypair::generate(), None, false).unwrap();
        fs::set_permissions(path(home.path()), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(home.path(), None),
            Err(Error::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn malformed_files_are_errors() {
        let home = tempfile::tempdir().unwrap();
        let p = path(home.path());
        for text in [
            "",
            "{}",
            "not json",
            r#"{"version":1,"did":"did:key:x","protection":"none","seed":"zz"}"#,
            r#"{"version":2,"did":"x","protection":"none","seed":"00"}"#,
            r#"{"version":1,"did":"x","protection":"argon2id-xchacha20poly1305","kdf":{"m_kib":4294967295,"t":1,"p":1},"salt":"00","nonce":"00","ciphertext":"00"}"#,
        ] {
            let _ = fs::remove_file(&p);
            open_private(&p)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            assert!(load(home.path(), Some(b"pw")).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn seed_file_import() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("seed");
        let hex_seed: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        fs::write(&f, format!("{hex_seed}\n")).unwrap();
        assert_eq!(
            read_seed_file(&f).unwrap().did().to_string(),
            "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd"
        );
        fs::write(&f, "abc").unwrap();
        assert!(matches!(read_seed_file(&f), Err(Error::Malformed(_))));
    }
}
