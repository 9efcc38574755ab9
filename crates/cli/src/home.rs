//! The node's home directory: where the identity and the store live, and the commands that
//! only touch the identity (`init`, `id`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sov_identity::{DidDocument, Keypair, keystore};
use zeroize::Zeroizing;

use crate::output::{note, say};

/// A resolved home directory and how to open its identity.
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
    passphrase: Option<Zeroizing<Vec<u8>>>,
}

impl Home {
    /// `--home`, else `$SOV_HOME` (clap reads it), else `~/.sov`; the passphrase from
    /// `--passphrase-file`, else `$SOV_PASSPHRASE`.
    pub fn resolve(
        home: Option<PathBuf>,
        passphrase_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let dir = match home {
            Some(d) if d.as_os_str().is_empty() => bail!("--home must not be empty"),
            Some(d) => d,
            None => {
                let user = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .context("cannot find the home directory: set HOME, SOV_HOME or --home")?;
                PathBuf::from(user).join(".sov")
            }
        };
        let passphrase = match passphrase_file {
            Some(f) => {
                let text = Zeroizing::new(
                    std::fs::read(&f)
                        .with_context(|| format!("reading passphrase file {}", f.display()))?,
                );
                let trimmed = trim_newline(&text);
                if trimmed.is_empty() {
                    bail!("passphrase file {} is empty", f.display());
                }
                Some(Zeroizing::new(trimmed.to_vec()))
            }
            None => std::env::var_os("SOV_PASSPHRASE")
                .filter(|p| !p.is_empty())
                .map(|p| Zeroizing::new(p.into_encoded_bytes())),
        };
        Ok(Self { dir, passphrase })
    }

    /// The node's keypair (asks for nothing: the passphrase comes from the environment).
    pub fn keypair(&self) -> anyhow::Result<Keypair> {
        Ok(keystore::load(
            &self.dir,
            self.passphrase.as_deref().map(|p| p.as_slice()),
        )?)
    }
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// `sov init`
pub fn init(home: &Home, force: bool, import_seed: Option<&Path>) -> anyhow::Result<()> {
    if keystore::exists(&home.dir) && !force {
        bail!(
            "an identity already exists in {} (its DID: {}); use --force to replace it",
            home.dir.display(),
            keystore::peek_did(&home.dir)
                .map(|d| d.to_string())
                .unwrap_or_else(|_| "unreadable".into())
        );
    }
    let keypair = match import_seed {
        Some(f) => keystore::read_seed_file(f)
            .with_context(|| format!("importing seed from {}", f.display()))?,
        None => Keypair::generate(),
    };
    create_private_dir(&home.dir)?;
    keystore::save(
        &home.dir,
        &keypair,
        home.passphrase.as_deref().map(|p| p.as_slice()),
        force,
    )?;
    if force && home.dir.join(sov_node::DB_FILE).exists() {
        note!(
            "note: the store in {} keeps its objects; those of the previous identity stay readable only by that identity (or to whom it granted them)",
            home.dir.display()
        );
    }
    sov_identity::token::ensure(&home.dir)?;
    let sealed = if home.passphrase.is_some() {
        "sealed with your passphrase"
    } else {
        "not encrypted: set SOV_PASSPHRASE before `sov init` to seal it"
    };
    note!(
        "identity written to {} ({sealed})",
        keystore::path(&home.dir).display()
    );
    say!("{}", keypair.did())?;
    Ok(())
}

/// `sov id`
pub fn id(home: &Home, json: bool) -> anyhow::Result<()> {
    let did = keystore::peek_did(&home.dir)?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&DidDocument::resolve(&did))?
        )?;
    } else {
        say!("{did}")?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}
