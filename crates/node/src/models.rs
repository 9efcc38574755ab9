//! The model registry: models kept as store objects, each described by a signed model
//! manifest (`sov_models::manifest`), itself stored as an object of media type
//! [`MANIFEST_MEDIA_TYPE`]. A model's id is the object id of its manifest; its name is the
//! one the manifest gives. Nothing else is stored: the registry is the set of readable
//! manifest objects whose signatures verify, so a model pulled from a peer, imported from a
//! CAR or added here is listed the same way.
//!
//! ```text
//!  FILE.gguf ──describe (parse, config, tokeniser)──▶ weights object ─┐
//!  DIR/ config.json, model.safetensors, tokenizer.json ──▶ 3 objects ─┤
//!                                                                     ▼
//!                      ModelManifest {name, kind, arch, format, weights, tokenizer, …}
//!                          ──Signed (sov/model/1)──▶ manifest object = the model's id
//! ```
//!
//! The [`Node`] methods are the registry's door: they run the work on the store as the
//! node's tasks, keep verified manifests cached by id (a manifest is checked once, not on
//! every request), and add pulling from peers.

use std::{
    collections::HashMap,
    io::{Cursor, Read},
    path::Path,
    path::PathBuf,
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Signed};
use sov_models::{
    bert::Bert,
    generate::LanguageModel,
    manifest::{self, Description, ModelKind, ModelManifest, format},
};
use sov_store::{AddOptions, Store};

use crate::{Error, Node, Result};

/// Media type of a model manifest object.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.sov.model+dag-cbor";
/// Largest manifest accepted (real ones are under 1 KiB).
const MAX_MANIFEST: u64 = 64 << 10;
/// Largest config or tokeniser file read into memory.
const MAX_SIDE_FILE: u64 = 64 << 20;

/// A model in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The manifest's object id: the model's id.
    pub id: ContentId,
    /// Who signed the manifest.
    pub signer: Did,
    /// The manifest.
    pub manifest: ModelManifest,
}

/// What `import` was given.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The name to serve it under (default: from the file or folder name).
    pub name: Option<String>,
    /// Its licence.
    pub license: Option<String>,
    /// The manifest of the model it derives from.
    pub parent: Option<ContentId>,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// A chat template (a Jinja file) to use instead of the GGUF file's own, as llama.cpp's
    /// `--chat-template-file`: for a file whose template is wrong or lacks tool syntax.
    pub chat_template: Option<PathBuf>,
}

fn model_error(e: impl std::fmt::Display) -> Error {
    Error::Model(e.to_string())
}

/// Open `path`, which must be a regular file (not a device or a pipe, whose length says
/// nothing), with its length.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let f =
        std::fs::File::open(path).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::Model(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok((f, meta.len()))
}

/// A chat template file: UTF-8 text of at most [`sov_models::chat::MAX_TEMPLATE`] bytes.
fn read_template(path: &Path) -> Result<String> {
    let bytes = read_limited(path, sov_models::chat::MAX_TEMPLATE as u64)?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Model(format!("{}: a chat template is UTF-8 text", path.display())))
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    if len > limit {
        return Err(Error::Model(format!(
            "{} is {len} bytes; at most {limit} are read",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    Ok(out)
}

/// The default name for a model file or folder: its name without extension, cut to the
/// characters names allow.
fn default_name(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    let s: String = stem
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    s.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The store seen as a model registry, with the node's manifest cache.
pub(crate) struct Registry<'a> {
    pub(crate) store: &'a Store,
    cache: &'a ManifestCache,
}

impl Registry<'_> {
    /// Every model here whose manifest is readable and verifies, by name.
    fn list(&self) -> Result<Vec<ModelEntry>> {
        let store = self.store;
        let mut out = Vec::new();
        for info in store.list()? {
            let Some(meta) = &info.meta else { continue };
            if meta.media_type != MANIFEST_MEDIA_TYPE || meta.size > MAX_MANIFEST {
                continue;
            }
            if let Some(e) = self.cache.get(&info.id) {
                out.push(e);
                continue;
            }
            match self.read_manifest(&info.id) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(id = %info.id, "skipping a model manifest: {e}"),
            }
        }
        out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Read and verify the manifest object `id`.
    fn read_manifest(&self, id: &ContentId) -> Result<ModelEntry> {
        if let Some(e) = self.cache.get(id) {
            return Ok(e);
        }
        let store = self.store;
        let info = store.info(id)?;
        match &info.meta {
            Some(m) if m.media_type == MANIFEST_MEDIA_TYPE && m.size <= MAX_MANIFEST => {}
            Some(m) => {
                return Err(Error::Model(format!(
                    "object {id} is {:?} of {} bytes, not a model manifest",
                    m.media_type, m.size
                )));
            }
            None => {
                return Err(sov_store::Error::NoGrant {
                    object: *id,
                    reader: store.identity().did(),
                }
                .into());
            }
        }
        let mut bytes = Vec::new();
        store.get(id, &mut bytes)?;
        let signed = Signed::<ModelManifest>::decode(&bytes)
            .map_err(|e| Error::Model(format!("manifest {id}: {e}")))?;
        let signer = signed.signer();
        let manifest = signed.into_body();
        manifest::check_name(&manifest.name)
            .map_err(|e| Error::Model(format!("manifest {id}: {e}")))?;
        let entry = ModelEntry {
            id: *id,
            signer,
            manifest,
        };
        self.cache.put(&entry);
        Ok(entry)
    }

    /// The model called `name_or_id` (a name, or a manifest id).
    fn resolve(&self, name_or_id: &str) -> Result<ModelEntry> {
        // A name a group promoted a model under (its own, or `default`).
        if let Some(served) = self
            .store
            .record(SERVED_TOPIC, name_or_id.as_bytes())?
            .and_then(|v| serde_json::from_slice::<Served>(&v).ok())
        {
            return self.read_manifest(&served.model);
        }
        if let Ok(id) = name_or_id.parse::<ContentId>() {
            return self.read_manifest(&id).map_err(|e| match e {
                Error::Store(sov_store::Error::NotFound(_)) => {
                    Error::NoModel(format!("no model with id {id} here"))
                }
                e => e,
            });
        }
        let all = self.list()?;
        let mut found: Vec<&ModelEntry> = all
            .iter()
            .filter(|e| e.manifest.name == name_or_id)
            .collect();
        match found.len() {
            0 => Err(Error::NoModel(format!(
                "no model named {} here{}",
                sov_core::quote(name_or_id),
                if all.is_empty() {
                    " (import one with `sov model import FILE.gguf`)".to_string()
                } else {
                    format!(
                        "; there are: {}",
                        all.iter()
                            .map(|e| e.manifest.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ))),
            1 => Ok(found.remove(0).clone()),
            _ => Err(Error::Model(format!(
                "{} models are named {}; name one by id: {}",
                found.len(),
                sov_core::quote(name_or_id),
                found
                    .iter()
                    .map(|e| e.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

pub(crate) fn add_bytes(
    store: &Store,
    bytes: Vec<u8>,
    name: &str,
    media: &str,
    created: u64,
) -> Result<ContentId> {
    let added = store.add(
        Cursor::new(bytes),
        AddOptions {
            name: name.into(),
            media_type: media.into(),
            created,
        },
        &mut |_| {},
    )?;
    Ok(added.id)
}

/// A model's weights file, open at its start, and its length: its header was read and
/// checked; the rest streams into the store.
struct Weights(std::fs::File, u64);

/// A model's files, read and described.
struct Files {
    desc: Description,
    format: &'static str,
    weights: Weights,
    tokenizer: Option<Vec<u8>>,
    config: Option<Vec<u8>>,
}

impl Registry<'_> {
    /// Import a GGUF file or a Hugging Face folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`) as a model: the files become objects, described by a new signed
    /// manifest. The model is checked to load before anything is stored.
    fn import(&self, path: &Path, opts: ImportOptions) -> Result<ModelEntry> {
        let store = self.store;
        let name = opts.name.clone().unwrap_or_else(|| default_name(path));
        manifest::check_name(&name).map_err(Error::Model)?;
        if let Some(e) = self.list()?.into_iter().find(|e| e.manifest.name == name) {
            return Err(Error::Model(format!(
                "a model named {name:?} is already here ({}); remove it first or pick another --name",
                e.id
            )));
        }
        let created = opts.created;
        let template = match &opts.chat_template {
            None => None,
            Some(_) if path.is_dir() => {
                return Err(Error::Model(
                    "a chat template is for a language model's GGUF file, not a model folder"
                        .into(),
                ));
            }
            Some(t) => Some(read_template(t)?),
        };
        let Files {
            desc,
            format: fmt,
            weights: weights_bytes,
            tokenizer,
            config,
        } = if path.is_dir() {
            let file = |n: &str| path.join(n);
            for n in ["config.json", "model.safetensors", "tokenizer.json"] {
                if !file(n).is_file() {
                    return Err(Error::Model(format!(
                        "{} has no {n} (a model folder holds config.json, model.safetensors and tokenizer.json)",
                        path.display()
                    )));
                }
            }
            let config = read_limited(&file("config.json"), MAX_SIDE_FILE)?;
            let tokenizer = read_limited(&file("tokenizer.json"), MAX_SIDE_FILE)?;
            // The weights' header only; they stream into the store below.
            let (mut weights, len) = open_regular(&file("model.safetensors"))?;
            let table = sov_models::safetensors::SafeTensors::read_head(&mut weights, len)
                .map_err(model_error)?;
            std::io::Seek::rewind(&mut weights)
                .map_err(|e| Error::Model(format!("model.safetensors: {e}")))?;
            let mut desc =
                manifest::describe_bert_table(&config, &table, &tokenizer).map_err(model_error)?;
            // sentence-transformers serves at most max_seq_length tokens.
            if let Ok(b) = std::fs::read(file("sentence_bert_config.json"))
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && let Some(n) = v.get("max_seq_length").and_then(|n| n.as_u64())
            {
                desc.context_length = desc.context_length.min(n);
            }
            Files {
                desc,
                format: format::SAFETENSORS,
                weights: Weights(weights, len),
                tokenizer: Some(tokenizer),
                config: Some(config),
            }
        } else {
            // The header first (a few MiB at most): a file that is no model is refused
            // before its weights are read, and the weights then stream into the store.
            let (mut file, len) = open_regular(path)?;
            let (g, _) = sov_models::gguf::Gguf::read_head(&mut file, len).map_err(model_error)?;
            let desc = manifest::describe_gguf(&g).map_err(model_error)?;
            LanguageModel::check_table(&g).map_err(model_error)?;
            if let Some(t) = &template {
                LanguageModel::check_template(&g, t).map_err(model_error)?;
            }
            std::io::Seek::rewind(&mut file)
                .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
            Files {
                desc,
                format: format::GGUF,
                weights: Weights(file, len),
                tokenizer: None,
                config: None,
            }
        };
        let weights_size = weights_bytes.1;
        let weights_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|_| fmt == format::GGUF)
            .unwrap_or_else(|| "model.safetensors".into());
        let Weights(file, len) = weights_bytes;
        let added = store.add(
            std::io::BufReader::new(file).take(len),
            AddOptions {
                name: weights_name.clone(),
                media_type: "application/octet-stream".into(),
                created,
            },
            &mut |_| {},
        )?;
        if added.size != len {
            let _ = store.remove(&added.id);
            return Err(Error::Model(format!(
                "{} changed while it was imported ({} bytes read, {len} expected)",
                path.display(),
                added.size
            )));
        }
        let weights = added.id;
        let tokenizer = tokenizer
            .map(|t| add_bytes(store, t, "tokenizer.json", "application/json", created))
            .transpose()?;
        let chat_template = template
            .map(|t| {
                add_bytes(
                    store,
                    t.into_bytes(),
                    "chat_template.jinja",
                    "text/plain",
                    created,
                )
            })
            .transpose()?;
        let config = config
            .map(|c| add_bytes(store, c, "config.json", "application/json", created))
            .transpose()?;
        let m = ModelManifest {
            name: name.clone(),
            kind: desc.kind,
            architecture: desc.architecture,
            format: fmt.into(),
            weights,
            weights_size,
            tokenizer,
            config,
            chat_template,
            parameters: desc.parameters,
            context_length: desc.context_length,
            dimensions: desc.dimensions,
            quantization: desc.quantization,
            parent: opts.parent,
            license: opts.license,
            training: None,
            evaluation: Vec::new(),
            created,
        };
        self.register(m)
    }

    /// Sign `manifest` with this node's key and store it: the model is then listed. Its
    /// objects must be stored here already.
    fn register(&self, manifest: ModelManifest) -> Result<ModelEntry> {
        let store = self.store;
        manifest::check_name(&manifest.name).map_err(Error::Model)?;
        for part in parts(&manifest) {
            if !store.contains(&part)? {
                return Err(Error::Model(format!(
                    "the manifest names object {part}, which is not stored here"
                )));
            }
        }
        let signed = Signed::sign(manifest, store.identity()).map_err(model_error)?;
        let bytes = signed.encode().map_err(model_error)?;
        let name = signed.body().name.clone();
        let id = add_bytes(
            store,
            bytes,
            &name,
            MANIFEST_MEDIA_TYPE,
            signed.body().created,
        )?;
        let entry = ModelEntry {
            id,
            signer: signed.signer(),
            manifest: signed.into_body(),
        };
        self.cache.put(&entry);
        Ok(entry)
    }

    /// Remove a model: its manifest, and each of its objects no other model here uses.
    fn remove(&self, name_or_id: &str) -> Result<ModelEntry> {
        let store = self.store;
        let entry = self.resolve(name_or_id)?;
        store.remove(&entry.id)?;
        self.cache.forget(&entry.id);
        let still_used: Vec<ContentId> = self
            .list()?
            .iter()
            .flat_map(|e| parts(&e.manifest))
            .collect();
        for part in parts(&entry.manifest) {
            if !still_used.contains(&part) && store.contains(&part)? {
                store.remove(&part)?;
            }
        }
        Ok(entry)
    }
}

/// The objects a manifest names.
pub fn parts(m: &ModelManifest) -> Vec<ContentId> {
    let mut v = vec![m.weights];
    v.extend(m.tokenizer);
    v.extend(m.config);
    v.extend(m.chat_template);
    v
}

fn read_object(store: &Store, id: &ContentId, expected: Option<u64>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(expected.unwrap_or(0) as usize);
    let info = store.get(id, &mut out)?;
    if let Some(n) = expected
        && info.meta.as_ref().map(|m| m.size) != Some(n)
    {
        return Err(Error::Model(format!(
            "object {id} holds {} bytes; the manifest says {n}",
            out.len()
        )));
    }
    Ok(out)
}

/// A model loaded for serving.
pub(crate) enum Loaded {
    /// A language model (chat, completions).
    Language(Box<LanguageModel>),
    /// An embedding model.
    Embedding(Box<Bert>),
}

/// The records topic of the names models are served under because a group promoted them
/// (`sov gov propose GROUP promote MODEL`): the group's name and `default`.
pub(crate) const SERVED_TOPIC: &str = "gov-served";

/// A model served under a name because a group promoted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The group's name.
    pub name: String,
    /// The model's manifest id.
    pub model: ContentId,
    /// The group.
    pub group: ContentId,
    /// The proposal that promoted it.
    pub proposal: ContentId,
    /// When that proposal was made (a later promotion replaces an earlier one).
    pub created: u64,
}

/// Load a model's weights from the store.
pub(crate) fn load(store: &Store, entry: &ModelEntry) -> Result<Loaded> {
    let m = &entry.manifest;
    let weights = read_object(store, &m.weights, Some(m.weights_size))?;
    match (m.kind, m.format.as_str()) {
        (ModelKind::Language, format::GGUF) => {
            let mut lm = LanguageModel::from_bytes(&weights).map_err(model_error)?;
            if let Some(id) = &m.chat_template {
                // A manifest from a peer may name any object: its size is checked before it
                // is read.
                let max = sov_models::chat::MAX_TEMPLATE as u64;
                let size = store.info(id)?.meta.map_or(u64::MAX, |meta| meta.size);
                if size > max {
                    return Err(Error::Model(format!(
                        "model {}: its chat template object is larger than {max} bytes",
                        m.name
                    )));
                }
                let source = String::from_utf8(read_object(store, id, None)?).map_err(|_| {
                    Error::Model(format!("model {}: its chat template is not UTF-8", m.name))
                })?;
                lm.set_chat_template(&source).map_err(model_error)?;
            }
            Ok(Loaded::Language(Box::new(lm)))
        }
        (ModelKind::Embedding, format::SAFETENSORS) => {
            let side = |id: Option<ContentId>, what: &str| -> Result<Vec<u8>> {
                let id = id.ok_or_else(|| {
                    Error::Model(format!("model {}: the manifest names no {what}", m.name))
                })?;
                read_object(store, &id, None)
            };
            let config = side(m.config, "config")?;
            let tokenizer = side(m.tokenizer, "tokenizer")?;
            let max = usize::try_from(m.context_length).ok().filter(|&n| n > 0);
            Ok(Loaded::Embedding(Box::new(
                Bert::load(&config, &weights, &tokenizer, max).map_err(model_error)?,
            )))
        }
        (kind, fmt) => Err(Error::Model(format!(
            "model {}: a {} model in {fmt} format cannot be served (language GGUF and embedding safetensors can)",
            m.name,
            kind.as_str()
        ))),
    }
}

/// Verified manifests by object id. An id names its bytes forever, so an entry stays valid
/// while the object is stored; [`Node::remove`] forgets it.
#[derive(Default)]
pub(crate) struct ManifestCache(Mutex<HashMap<ContentId, ModelEntry>>);

/// Entries kept at most (each well under 1 KiB).
const MANIFEST_CACHE: usize = 4096;

impl ManifestCache {
    fn get(&self, id: &ContentId) -> Option<ModelEntry> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn put(&self, entry: &ModelEntry) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MANIFEST_CACHE {
            map.clear();
        }
        map.insert(entry.id, entry.clone());
    }

    pub(crate) fn forget(&self, id: &ContentId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

impl Node {
    /// Run a registry function on the blocking pool with the manifest cache.
    async fn registry<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let node = self.clone();
        self.blocking_node(move |store| {
            f(&Registry {
                store,
                cache: &node.inner.manifests,
            })
        })
        .await
    }

    /// The models here, by name.
    pub async fn models(&self) -> Result<Vec<ModelEntry>> {
        self.registry(|r| r.list()).await
    }

    /// The model called `name_or_id` (a name, or a manifest id).
    pub async fn model(&self, name_or_id: &str) -> Result<ModelEntry> {
        let n = name_or_id.to_string();
        self.registry(move |r| r.resolve(&n)).await
    }

    /// Import a GGUF file or a Hugging Face folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`) as a model: the files become objects, described by a new signed
    /// manifest. The model is checked to load before anything is stored.
    pub async fn import_model(&self, path: &Path, opts: ImportOptions) -> Result<ModelEntry> {
        let path = path.to_path_buf();
        let entry = self.registry(move |r| r.import(&path, opts)).await?;
        self.offer_soon();
        Ok(entry)
    }

    /// Sign `manifest` with this node's key and store it; its objects must be here.
    pub async fn register_model(&self, manifest: ModelManifest) -> Result<ModelEntry> {
        let entry = self.registry(move |r| r.register(manifest)).await?;
        self.offer_soon();
        Ok(entry)
    }

    /// Offer this node's models on gossip now, in the background.
    fn offer_soon(&self) {
        if self.is_online() {
            self.spawn(self.clone().offer_now());
        }
    }

    /// Remove model `name_or_id`: it is unloaded, its manifest removed, and each of its
    /// objects that no other model here uses.
    pub async fn remove_model(&self, name_or_id: &str) -> Result<ModelEntry> {
        let n = name_or_id.to_string();
        let entry = self.registry(move |r| r.remove(&n)).await?;
        self.evict(entry.id).await;
        if let Ok(net) = self.net() {
            for id in std::iter::once(entry.id).chain(parts(&entry.manifest)) {
                let _ = net.unprovide(id).await;
            }
        }
        Ok(entry)
    }

    /// Let `reader` read model `name_or_id`: its manifest and every object it names.
    pub async fn share_model(&self, name_or_id: &str, reader: Did) -> Result<ModelEntry> {
        let entry = self.model(name_or_id).await?;
        for id in std::iter::once(entry.id).chain(parts(&entry.manifest)) {
            self.grant(id, reader).await?;
        }
        Ok(entry)
    }

    /// Check model `name_or_id`'s manifest again from its stored bytes: canonical, signed by
    /// the signer it names, over what the registry shows.
    pub async fn model_signature_valid(&self, name_or_id: &str) -> Result<bool> {
        let entry = self.model(name_or_id).await?;
        let bytes = self.read(entry.id).await?;
        Ok(Signed::<ModelManifest>::decode(&bytes)
            .is_ok_and(|s| s.signer() == entry.signer && *s.body() == entry.manifest))
    }

    /// Fetch model `id` (a manifest id) from the peers that hold it: the manifest first,
    /// whose signature must verify, then each object it names. Blocks are checked against
    /// their CIDs as they arrive, so what is stored is what the signer described.
    pub async fn pull_model(&self, id: ContentId) -> Result<ModelEntry> {
        self.net()?;
        self.fetch(id, None).await?;
        let entry = match self.registry(move |r| r.read_manifest(&id)).await {
            Ok(e) => e,
            Err(e) => {
                // Not a model: do not keep it.
                let _ = self.remove(id).await;
                return Err(e);
            }
        };
        let name = entry.manifest.name.clone();
        let clash = self
            .models()
            .await?
            .into_iter()
            .find(|e| e.manifest.name == name && e.id != id);
        if let Some(other) = clash {
            let _ = self.remove(id).await;
            return Err(Error::Model(format!(
                "a different model named {name:?} is already here ({}); remove it first",
                other.id
            )));
        }
        for part in parts(&entry.manifest) {
            self.fetch(part, None).await?;
        }
        let expected = entry.manifest.weights_size;
        let weights = entry.manifest.weights;
        let size = self
            .blocking(move |s| Ok(s.info(&weights)?.meta.map(|m| m.size)))
            .await?;
        if size != Some(expected) {
            return Err(Error::Model(format!(
                "the weights of {name} hold {size:?} bytes; the manifest says {expected}"
            )));
        }
        Ok(entry)
    }
}
