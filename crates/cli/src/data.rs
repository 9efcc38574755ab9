//! `sov data …`: the store from the command line.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sov_core::{ContentId, Did};
use sov_store::{AddOptions, ObjectInfo, Store};

use crate::{
    args::DataCommand,
    home::Home,
    output::{self, note, say},
};

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_FROM: u64 = 16 << 20;

pub fn run(home: &Home, cmd: DataCommand) -> anyhow::Result<()> {
    if let Some(node) = crate::node::running(&home.dir) {
        return crate::remote::data(&crate::remote::Api::new(home, &node)?, cmd);
    }
    match cmd {
        DataCommand::Add {
            path,
            name,
            replicas,
            json,
        } => add(&home.store()?, &home.dir, &path, name, replicas, json),
        DataCommand::Get { id, output } => {
            let id = parse_id(&id)?;
            get(&home.store()?, &id, output.as_deref()).map_err(|e| {
                match e.downcast_ref::<sov_store::Error>() {
                    Some(sov_store::Error::NotFound(_)) => anyhow::anyhow!(
                        "object {id} is not in this store; run `sov node run` so it can be fetched from peers"
                    ),
                    _ => e,
                }
            })
        }
        DataCommand::Ls { json } => ls(&home.store()?, json),
        DataCommand::Rm { id } => {
            let id = parse_id(&id)?;
            home.store()?.remove(&id)?;
            note!("removed {id}");
            Ok(())
        }
        DataCommand::Grant { id, did } => {
            let id = parse_id(&id)?;
            let did: Did = did
                .parse()
                .with_context(|| format!("{did:?} is not a usable did:key"))?;
            let grant = home.store()?.grant(&id, &did)?;
            note!("{did} may now read {id}");
            say!("{grant}")?;
            Ok(())
        }
        DataCommand::Export { id, output } => export(&home.store()?, &parse_id(&id)?, &output),
        DataCommand::Import { file, json } => import(&home.store()?, &file, json),
    }
}

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
    fn from(info: &ObjectInfo) -> Self {
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

fn add(
    store: &Store,
    home: &Path,
    path: &Path,
    name: Option<String>,
    replicas: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let from_stdin = path.as_os_str() == "-";
    let name = object_name(path, name);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let opts = AddOptions {
        media_type: output::media_type(&name).into(),
        name: name.clone(),
        created,
    };
    let (input, len): (Box<dyn io::Read>, Option<u64>) = if from_stdin {
        (Box::new(io::stdin().lock()), None)
    } else {
        let file = open_file(path)?;
        let len = file.metadata().map(|m| m.len()).ok();
        (Box::new(file), len)
    };
    let bar = progress_bar(len.unwrap_or(0), format!("encrypting {name}"));
    let added = store
        .add(input, opts, &mut |done| {
            if let Some(b) = &bar {
                b.set_position(done);
            }
        })
        .with_context(|| format!("adding {}", path.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // No node runs: the pin is recorded, and the node replicates the object once it starts.
    let replicas = match replicas {
        Some(k) => k,
        None => sov_node::ConfigFile::load(home)?.storage.replicas,
    };
    store.set_pin(
        &added.id,
        sov_store::Pin {
            replicas,
            replica: false,
        },
    )?;
    if json {
        let info = store.info(&added.id)?;
        let mut j = ObjectJson::from(&info);
        j.new_chunks = Some(added.new_chunks);
        say!("{}", serde_json::to_string(&j)?)?;
    } else {
        note!(
            "added {name}: {}, {} chunks ({} new)",
            output::bytes(added.size),
            added.chunks,
            added.new_chunks
        );
        say!("{}", added.id)?;
    }
    Ok(())
}

fn get(store: &Store, id: &ContentId, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        None => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            store.get(id, &mut w)?;
            w.flush()?;
        }
        Some(path) => {
            let size = store.info(id)?.meta.map_or(0, |m| m.size);
            // Write beside the target and rename only after the whole object verified.
            write_atomically(path, size, format!("decrypting {id}"), |f| {
                store.get(id, f)?;
                Ok(())
            })?;
            note!("wrote {id} to {}", path.display());
        }
    }
    Ok(())
}

fn ls(store: &Store, json: bool) -> anyhow::Result<()> {
    let objects = store.list()?;
    let all: Vec<_> = objects.iter().map(ObjectJson::from).collect();
    if json {
        say!("{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    print_table(&all, &store.identity().did().to_string())
}

fn export(store: &Store, id: &ContentId, path: &Path) -> anyhow::Result<()> {
    let size = store.info(id)?.stored_bytes;
    write_atomically(path, size, format!("exporting {id}"), |f| {
        store.export_car(id, f)?;
        Ok(())
    })?;
    note!("exported {id} to {}", path.display());
    Ok(())
}

fn import(store: &Store, path: &Path, json: bool) -> anyhow::Result<()> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(len, format!("verifying {}", path.display()));
    let id = store
        .import_car(Counting::new(file, bar.as_ref()))
        .with_context(|| format!("importing {}", path.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let info = store.info(&id)?;
    if json {
        say!("{}", serde_json::to_string(&ObjectJson::from(&info))?)?;
    } else {
        match &info.meta {
            Some(m) => note!("imported {} ({})", m.name, output::bytes(m.size)),
            None => note!(
                "imported encrypted object from {} (this node has no read grant for it)",
                info.owner
            ),
        }
        say!("{id}")?;
    }
    Ok(())
}

/// Create `path` through a temporary file in the same directory, renamed into place only if
/// `write` succeeds; on failure nothing is left behind. About `total` bytes are expected: a
/// progress bar shows them when that is large.
pub(crate) fn write_atomically(
    path: &Path,
    total: u64,
    message: String,
    write: impl FnOnce(&mut dyn io::Write) -> anyhow::Result<()>,
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
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // No fsync: like `cp`, the copy is as durable as the file system makes it; what matters
    // here is that FILE never holds unverified or partial bytes.
    let bar = progress_bar(total, message);
    let result = write(&mut Counting::new(&mut f, bar.as_ref()));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(f);
    match result {
        Ok(()) => fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display())),
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

/// Counts the bytes that pass through a reader or writer onto a progress bar.
struct Counting<'a, T> {
    inner: T,
    bar: Option<&'a ProgressBar>,
}

impl<'a, T> Counting<'a, T> {
    fn new(inner: T, bar: Option<&'a ProgressBar>) -> Self {
        Self { inner, bar }
    }

    fn count(&self, n: usize) {
        if let Some(b) = self.bar {
            b.inc(n as u64);
        }
    }
}

impl<T: io::Read> io::Read for Counting<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}

impl<T: io::Write> io::Write for Counting<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
