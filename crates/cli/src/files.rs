//! What `sov data` shows and writes, wherever the work runs (an offline node here, or the
//! running node's API): object ids, how objects are printed, file names, progress bars, and
//! files written whole or not at all.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sov_core::ContentId;
use sov_node::ObjectInfo;

use crate::output::{self, note, say};

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_FROM: u64 = 16 << 20;

pub(crate) fn parse_id(s: &str) -> anyhow::Result<ContentId> {
    s.parse()
        .with_context(|| format!("{s:?} is not an object id (expected a CID such as bafyr4i…)"))
}

/// An object as `ls --json`, `add --json` and `import --json` print it.
#[derive(Serialize)]
pub(crate) struct ObjectJson {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) size: Option<u64>,
    pub(crate) created: String,
    pub(crate) media_type: Option<String>,
    pub(crate) owner: String,
    pub(crate) readable: bool,
    pub(crate) chunks: usize,
    pub(crate) stored_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) new_chunks: Option<usize>,
}

/// The name an added object gets: `--name`, else the file name (`stdin` for `-`).
pub(crate) fn object_name(path: &Path, name: Option<String>) -> String {
    match name {
        Some(n) => n,
        None if path.as_os_str() == "-" => "stdin".into(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into()),
    }
}

/// Open a file to add or import; directories are refused.
pub(crate) fn open_file(path: &Path) -> anyhow::Result<fs::File> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        bail!("{} is a directory; add files one by one", path.display());
    }
    Ok(file)
}

/// The `ls` table.
pub(crate) fn print_table(objects: &[ObjectJson], me: &str) -> anyhow::Result<()> {
    if objects.is_empty() {
        note!("no objects yet: add one with `sov data add FILE`");
        return Ok(());
    }
    say!("{:<62} {:>10}  {:<20}  NAME", "ID", "SIZE", "CREATED")?;
    for o in objects {
        let (size, name) = match (&o.name, o.size) {
            (Some(n), Some(s)) => (output::bytes(s), n.clone()),
            _ => (
                format!("~{}", output::bytes(o.stored_bytes)),
                "(no read grant)".into(),
            ),
        };
        let owner = if o.owner == me {
            String::new()
        } else {
            format!("  [owner {}]", o.owner)
        };
        say!(
            "{:<62} {:>10}  {:<20}  {name}{owner}",
            o.id,
            size,
            o.created
        )?;
    }
    Ok(())
}

impl ObjectJson {
    pub(crate) fn from_info(info: &ObjectInfo) -> Self {
        Self {
            id: info.id.to_string(),
            name: info.meta.as_ref().map(|m| m.name.clone()),
            size: info.meta.as_ref().map(|m| m.size),
            created: output::rfc3339(info.created),
            media_type: info.meta.as_ref().map(|m| m.media_type.clone()),
            owner: info.owner.to_string(),
            readable: info.meta.is_some(),
            chunks: info.chunks,
            stored_bytes: info.stored_bytes,
            new_chunks: None,
        }
    }
}

/// Create `path` through a temporary file in the same directory, renamed into place only if
/// `write` succeeds; on failure nothing is left behind. `write` gets the file (counting onto
/// a progress bar when about `total` bytes is large) and hands it back when done.
pub(crate) fn write_atomically(
    path: &Path,
    total: u64,
    message: String,
    write: impl FnOnce(Counting<fs::File>) -> anyhow::Result<Counting<fs::File>>,
) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.sov-partial-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // No fsync: like `cp`, the copy is as durable as the file system makes it; what matters
    // here is that FILE never holds unverified or partial bytes.
    let result = write(Counting::new(f, progress_bar(total, message)));
    match result {
        Ok(c) => {
            c.finish();
            fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A progress bar on stderr for work over `total` bytes, if that is large enough to wait for.
/// indicatif draws nothing when stderr is not a terminal.
pub(crate) fn progress_bar(total: u64, message: String) -> Option<ProgressBar> {
    if total < PROGRESS_FROM {
        return None;
    }
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(message);
    Some(bar)
}

/// A reader or writer that counts the bytes passing through onto a progress bar. It owns
/// what it wraps, so it can move to the node's blocking pool and back.
pub(crate) struct Counting<T> {
    inner: T,
    bar: Option<ProgressBar>,
}

impl<T> Counting<T> {
    pub(crate) fn new(inner: T, bar: Option<ProgressBar>) -> Self {
        Self { inner, bar }
    }

    fn count(&self, n: usize) {
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
    }

    /// Clear the progress bar.
    pub(crate) fn finish(self) -> T {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.inner
    }
}

impl<T: io::Read> io::Read for Counting<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}

impl<T: io::Write> io::Write for Counting<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
