//! The node's home directory: where the identity and the store live, and the commands that
//! only touch the identity (`init`, `id`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sov_identity::{DidDocument, Keypair, keystore};
use zeroize::Zeroizing;

use crate::{
    args::IdCommand,
    output::{note, say},
};

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
pub fn init(
    home: &Home,
    force: bool,
    discard_data: bool,
    import_seed: Option<&Path>,
) -> anyhow::Result<()> {
    if keystore::exists(&home.dir) {
        let did = keystore::peek_did(&home.dir)
            .map(|d| d.to_string())
            .unwrap_or_else(|_| "unreadable".into());
        if !force {
            bail!(
                "an identity already exists in {} (its DID: {did}); to seal it with a passphrase, run `sov id seal` (it keeps the key); to replace it, `sov init --force`",
                home.dir.display(),
            );
        }
        if has_store(&home.dir) && !discard_data {
            bail!(
                "{} holds a store whose objects only the current identity ({did}) can read; replacing it would make them unreadable. To seal the identity with a passphrase, run `sov id seal` (it keeps the key). To replace it anyway, run `sov init --force --discard-data` (the old key is kept as a dated backup)",
                home.dir.display(),
            );
        }
    }
    let keypair = match import_seed {
        Some(f) => keystore::read_seed_file(f)
            .with_context(|| format!("importing seed from {}", f.display()))?,
        None => Keypair::generate(),
    };
    create_private_dir(&home.dir)?;
    let saved = keystore::save(
        &home.dir,
        &keypair,
        home.passphrase.as_deref().map(|p| p.as_slice()),
        force,
    )?;
    if let Some(saved) = saved {
        note!(
            "the previous identity is kept in {} (restore it with `sov id import --force {}`)",
            saved.display(),
            saved.display()
        );
    }
    if force && has_store(&home.dir) {
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

/// `sov id seal|unseal|export|import`
pub fn id_action(home: &Home, action: IdCommand, json: bool) -> anyhow::Result<()> {
    let pass = home.passphrase.as_deref().map(|p| p.as_slice());
    let (did, saved, what) = match action {
        IdCommand::Seal => {
            if keystore::is_encrypted(&home.dir)? {
                bail!(
                    "the identity in {} is already sealed; to change its passphrase, run `sov id unseal` with the old one, then `sov id seal` with the new one",
                    home.dir.display()
                );
            }
            if pass.is_none() {
                bail!("no passphrase: set SOV_PASSPHRASE or pass --passphrase-file");
            }
            let saved = keystore::reseal(&home.dir, None, pass)?;
            (keystore::peek_did(&home.dir)?, saved, "sealed")
        }
        IdCommand::Unseal => {
            if !keystore::is_encrypted(&home.dir)? {
                bail!("the identity in {} is not sealed", home.dir.display());
            }
            let saved = keystore::reseal(&home.dir, pass, None)?;
            note!("warning: the key is now stored unencrypted (mode 0600)");
            (keystore::peek_did(&home.dir)?, saved, "unsealed")
        }
        IdCommand::Export { file } => {
            let did = keystore::export(&home.dir, &file)
                .with_context(|| format!("exporting to {}", file.display()))?;
            (did, Some(file), "exported")
        }
        IdCommand::Import {
            file,
            force,
            discard_data,
        } => {
            let incoming = keystore::peek_file(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            if let Ok(current) = keystore::peek_did(&home.dir)
                && current != incoming
                && has_store(&home.dir)
                && !discard_data
            {
                bail!(
                    "{} holds a store whose objects only the current identity ({current}) can read, and {} is another identity ({incoming}); to replace it anyway, add --force --discard-data (the current key is kept as a dated backup)",
                    home.dir.display(),
                    file.display()
                );
            }
            create_private_dir(&home.dir)?;
            let (did, saved) = keystore::import(&home.dir, &file, force).map_err(|e| match e {
                keystore::Error::Exists(p) => anyhow::anyhow!(
                    "an identity already exists at {}; add --force to replace it (it is kept as a dated backup)",
                    p.display()
                ),
                e => e.into(),
            })?;
            sov_identity::token::ensure(&home.dir)?;
            (did, saved, "imported")
        }
    };
    if json {
        say!(
            "{}",
            serde_json::json!({
                "did": did.to_string(),
                "action": what,
                "file": saved.as_ref().map(|p| p.display().to_string()),
            })
        )?;
        return Ok(());
    }
    match (what, saved) {
        ("exported", Some(f)) => note!(
            "identity {did} exported to {} (keep it safe: it is your key)",
            f.display()
        ),
        (_, Some(f)) => note!(
            "identity {did} {what}; the previous key file is kept in {}",
            f.display()
        ),
        _ => note!("identity {did} {what}"),
    }
    say!("{did}")?;
    Ok(())
}

/// Whether `dir` holds a store (objects that only its identity may be able to read).
fn has_store(dir: &Path) -> bool {
    dir.join(sov_node::DB_FILE).exists()
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
