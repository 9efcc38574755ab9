//! `sov data …` on this machine, through an offline node (no node is running; see
//! [`crate::target`]). `crate::remote` does the same through a running node's API.

use std::{
    io::{self, Write as _},
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use sov_core::{ContentId, Did};
use sov_node::{AddOptions, Error, StoreError};

use crate::{
    args::DataCommand,
    files::{self, Counting, ObjectJson, object_name, open_file, parse_id, progress_bar},
    output::{self, note, say},
    target::Local,
};

pub fn run(local: &Local, cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Add {
            path,
            name,
            replicas,
            json,
        } => add(local, &path, name, replicas, json),
        DataCommand::Get { id, output } => {
            let id = parse_id(&id)?;
            get(local, id, output.as_deref()).map_err(|e| {
                match e.downcast_ref::<Error>() {
                    Some(Error::Store(StoreError::NotFound(_))) => anyhow::anyhow!(
                        "object {id} is not in this store; run `sov node run` so it can be fetched from peers"
                    ),
                    _ => e,
                }
            })
        }
        DataCommand::Ls { json } => ls(local, json),
        DataCommand::Rm { id } => {
            let id = parse_id(&id)?;
            local.block_on(local.node().remove(id))?;
            note!("removed {id}");
            Ok(())
        }
        DataCommand::Grant { id, did } => {
            let id = parse_id(&id)?;
            let did: Did = did
                .parse()
                .with_context(|| format!("{did:?} is not a usable did:key"))?;
            let grant = local.block_on(local.node().grant(id, did))?;
            note!("{did} may now read {id}");
            say!("{grant}")?;
            Ok(())
        }
        DataCommand::Export { id, output } => export(local, parse_id(&id)?, &output),
        DataCommand::Import { file, json } => import(local, &file, json),
    }
}

fn add(
    local: &Local,
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
    let (input, len): (Box<dyn io::Read + Send>, Option<u64>) = if from_stdin {
        (Box::new(io::stdin()), None)
    } else {
        let file = open_file(path)?;
        let len = file.metadata().map(|m| m.len()).ok();
        (Box::new(file), len)
    };
    let bar = progress_bar(len.unwrap_or(0), format!("encrypting {name}"));
    let progress = bar.clone();
    // No node runs: the pin is recorded, and the node replicates the object once it starts.
    let node = local.node();
    let (added, _) = local
        .block_on(node.add_with_progress(input, opts, replicas, move |done| {
            if let Some(b) = &progress {
                b.set_position(done);
            }
        }))
        .with_context(|| format!("adding {}", path.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        let entry = local.block_on(node.object(added.id))?;
        let mut j = ObjectJson::from_info(&entry.info);
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

fn get(local: &Local, id: ContentId, out: Option<&Path>) -> anyhow::Result<()> {
    let node = local.node();
    let reading = local.block_on(node.open_read(id))?;
    match out {
        None => {
            let w = io::BufWriter::with_capacity(1 << 20, io::stdout());
            let mut w = local.block_on(node.read_into(reading, w))?;
            w.flush()?;
        }
        Some(path) => {
            let size = reading.meta.size;
            // Write beside the target and rename only after the whole object verified.
            files::write_atomically(path, size, format!("decrypting {id}"), |f| {
                Ok(local.block_on(node.read_into(reading, f))?)
            })?;
            note!("wrote {id} to {}", path.display());
        }
    }
    Ok(())
}

fn ls(local: &Local, json: bool) -> anyhow::Result<()> {
    let objects = local.block_on(local.node().objects())?;
    let all: Vec<_> = objects
        .iter()
        .map(|o| ObjectJson::from_info(&o.info))
        .collect();
    if json {
        say!("{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    files::print_table(&all, &local.node().did().to_string())
}

fn export(local: &Local, id: ContentId, path: &Path) -> anyhow::Result<()> {
    let node = local.node();
    let size = local.block_on(node.object(id))?.info.stored_bytes;
    files::write_atomically(path, size, format!("exporting {id}"), |f| {
        Ok(local.block_on(node.export_car(id, f))?)
    })?;
    note!("exported {id} to {}", path.display());
    Ok(())
}

fn import(local: &Local, path: &Path, json: bool) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(len, format!("verifying {}", path.display()));
    let node = local.node();
    let id = local
        .block_on(node.import_car(Counting::new(file, bar.clone())))
        .with_context(|| format!("importing {}", path.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let info = local.block_on(node.object(id))?.info;
    if json {
        say!("{}", serde_json::to_string(&ObjectJson::from_info(&info))?)?;
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
