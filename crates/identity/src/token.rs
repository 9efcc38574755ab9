//! The local admin token: `$SOV_HOME/admin.token`, 32 random bytes in hex, mode 0600. The
//! node's API accepts it as `Authorization: Bearer <token>`; whoever can read the home can
//! administer the node.

use std::{
    io::{self, Write as _},
    path::Path,
};

use zeroize::{Zeroize as _, Zeroizing};

/// The admin token's file name in the home.
pub const TOKEN_FILE: &str = "admin.token";

/// The admin token of the home `dir`, created if it has none (or an empty one).
pub fn ensure(dir: &Path) -> io::Result<String> {
    let path = dir.join(TOKEN_FILE);
    match read_private(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = hex::encode(bytes);
    bytes.zeroize();
    write_private(&path, Zeroizing::new(format!("{token}\n")).as_bytes())?;
    Ok(token)
}

/// Read the admin token of the home `dir`.
pub fn read(dir: &Path) -> io::Result<String> {
    let path = dir.join(TOKEN_FILE);
    read_private(&path).map(|t| t.trim().to_owned())
}

/// Read the token file at `path`, refusing one that others can read (as the identity key
/// is refused): a token others could read is a token others may have.
fn read_private(path: &Path) -> io::Result<Zeroizing<String>> {
    let mut f = std::fs::File::open(path).map_err(|e| with_path(e, "reading", path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = f
            .metadata()
            .map_err(|e| with_path(e, "reading", path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to use {p}: its mode is {mode:03o}, readable by others (delete it \
                     and a new token is made, or run `chmod 600 {p}` if no one else could have \
                     read it)",
                    p = path.display()
                ),
            ));
        }
    }
    // Sized up front: growing would leave copies behind in freed memory.
    let mut text = Zeroizing::new(String::with_capacity(256));
    io::Read::read_to_string(&mut f, &mut text).map_err(|e| with_path(e, "reading", path))?;
    Ok(text)
}

/// Write `contents` to `path` through a temporary file readable only by its owner, renamed
/// into place (a reader never sees half a file).
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .map_err(|e| with_path(e, "creating", &tmp))?;
        f.write_all(contents)
            .map_err(|e| with_path(e, "writing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| with_path(e, "writing", path))
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let t = ensure(dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(ensure(dir.path()).unwrap(), t);
        assert_eq!(read(dir.path()).unwrap(), t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            // Made readable by others, it is refused, by both readers, and left as it is.
            let path = dir.path().join(TOKEN_FILE);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            for e in [
                ensure(dir.path()).unwrap_err(),
                read(dir.path()).unwrap_err(),
            ] {
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
                assert!(e.to_string().contains("mode is 644"), "{e}");
            }
            assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), t);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(dir.path().join(TOKEN_FILE), "\n").unwrap();
        assert_ne!(
            ensure(dir.path()).unwrap(),
            t,
            "an empty token file is replaced"
        );
    }
}
