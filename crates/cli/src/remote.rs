//! `sov data …`, `sov peers` and the model commands through a running node's API (redb has
//! one writer, so while a node runs, it is the one that touches the store).

use std::{
    io::{self, Write as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use sov_api::{AddedObject, Object, Peer};

use crate::{
    args::DataCommand,
    files::{self, ObjectJson, progress_bar, write_atomically},
    home::Home,
    node::NodeFile,
    output::{self, note, say},
};

/// A client of one node's API.
pub struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    /// The API of the node running on `home`.
    pub fn new(home: &Home, node: &NodeFile) -> anyhow::Result<Self> {
        let token = sov_identity::token::read(&home.dir)?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Self {
            base: node.api.clone(),
            token,
            agent,
        })
    }

    /// What to say when the node stops answering mid-command.
    fn lost(&self) -> String {
        format!(
            "the node at {} stopped answering (did `sov node run` exit?)",
            self.base
        )
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Turn a non-2xx answer into an error with the API's message.
    fn check(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("the node answered {status}"));
        bail!("{message}")
    }

    fn get(&self, path: &str) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .call()
            .with_context(|| self.lost())?;
        self.check(resp)
    }

    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.get(path)?.body_mut().read_json()?)
    }

    /// GET; the answer's bytes (at most 64 MiB).
    pub(crate) fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self
            .get(path)?
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()?)
    }

    /// POST a JSON body; the answer as JSON.
    pub(crate) fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_value(body)?;
        Ok(self
            .send("POST", path, &[], None, Some(body))?
            .body_mut()
            .read_json()?)
    }

    /// DELETE; the answer as JSON.
    pub(crate) fn delete_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<T> {
        Ok(self
            .send("DELETE", path, &[], None, None)?
            .body_mut()
            .read_json()?)
    }

    /// POST a JSON body and read the server-sent events of the answer: each `data:` line's
    /// JSON goes to `on_event`, until `[DONE]`. An event holding an error ends with it.
    pub(crate) fn stream_sse(
        &self,
        path: &str,
        body: &serde_json::Value,
        on_event: &mut dyn FnMut(serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        use std::io::BufRead as _;
        let mut resp = self.send("POST", path, &[], None, Some(body.clone()))?;
        let reader = io::BufReader::new(resp.body_mut().as_reader());
        for line in reader.lines() {
            let line = line.with_context(|| self.lost())?;
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                return Ok(());
            }
            let v: serde_json::Value =
                serde_json::from_str(data).context("the node sent an event that is not JSON")?;
            if let Some(m) = v["error"]["message"].as_str() {
                bail!("{m}");
            }
            on_event(v)?;
        }
        bail!("the node ended the answer early")
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&mut dyn io::Read>,
        json: Option<serde_json::Value>,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", self.auth())
                .call(),
            _ => {
                let req = self
                    .agent
                    .post(&url)
                    .header("Authorization", self.auth())
                    .query_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
                match (body, json) {
                    (Some(r), _) => req
                        .header("Content-Type", "application/octet-stream")
                        .send(ureq::SendBody::from_reader(r)),
                    (None, Some(j)) => req.send_json(j),
                    (None, None) => req.send_empty(),
                }
            }
        }
        .with_context(|| self.lost())?;
        self.check(resp)
    }
}

fn object_json(o: &Object) -> ObjectJson {
    ObjectJson {
        id: o.id.clone(),
        name: o.name.clone(),
        size: o.size,
        created: output::rfc3339(o.created),
        media_type: o.media_type.clone(),
        owner: o.owner.clone(),
        readable: o.readable,
        chunks: o.chunks,
        stored_bytes: o.stored_bytes,
        new_chunks: None,
    }
}

/// `sov data …` through the API.
pub fn data(api: &Api, cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Add {
            path,
            name,
            replicas,
            json,
        } => {
            let from_stdin = path.as_os_str() == "-";
            let name = files::object_name(&path, name);
            let mut query = vec![
                ("name", name.clone()),
                ("media_type", output::media_type(&name).to_owned()),
            ];
            if let Some(k) = replicas {
                query.push(("replicas", k.to_string()));
            }
            let mut input: Box<dyn io::Read> = if from_stdin {
                Box::new(io::stdin().lock())
            } else {
                let f = files::open_file(&path)?;
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                match progress_bar(len, format!("encrypting {name}")) {
                    Some(bar) => Box::new(bar.wrap_read(f)),
                    None => Box::new(f),
                }
            };
            let added: AddedObject = api
                .send("POST", "/api/v1/objects", &query, Some(&mut input), None)
                .with_context(|| format!("adding {}", path.display()))?
                .body_mut()
                .read_json()?;
            if json {
                let o: Object = api.get_json(&format!("/api/v1/objects/{}/info", added.id))?;
                let mut j = object_json(&o);
                j.new_chunks = Some(added.new_chunks);
                let mut v = serde_json::to_value(&j)?;
                v["replicas"] = added.replicas.into();
                v["holders"] = added.holders.clone().into();
                say!("{}", serde_json::to_string(&v)?)?;
            } else {
                note!(
                    "added {name}: {}, {} chunks ({} new); {} of {} replicas placed",
                    output::bytes(added.size),
                    added.chunks,
                    added.new_chunks,
                    added.holders.len(),
                    added.replicas
                );
                say!("{}", added.id)?;
            }
            Ok(())
        }
        DataCommand::Get { id, output } => {
            let id = files::parse_id(&id)?;
            if api.get(&format!("/api/v1/objects/{id}/info")).is_err() {
                note!("{id} is not stored here: fetching it from peers…");
            }
            let mut resp = api.get(&format!("/api/v1/objects/{id}"))?;
            let size = resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let body = resp.body_mut().with_config().limit(u64::MAX).reader();
            copy_out(body, size, output.as_deref(), &format!("fetching {id}"))?;
            if let Some(p) = output {
                note!("wrote {id} to {}", p.display());
            }
            Ok(())
        }
        DataCommand::Ls { json } => {
            let objects: Vec<Object> = api.get_json("/api/v1/objects")?;
            let all: Vec<ObjectJson> = objects.iter().map(object_json).collect();
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?)?;
            } else {
                let me: serde_json::Value = api.get_json("/api/v1/identity")?;
                files::print_table(&all, me["did"].as_str().unwrap_or_default())?;
            }
            Ok(())
        }
        DataCommand::Rm { id } => {
            let id = files::parse_id(&id)?;
            api.send("DELETE", &format!("/api/v1/objects/{id}"), &[], None, None)?;
            note!("removed {id}");
            Ok(())
        }
        DataCommand::Grant { id, did } => {
            let id = files::parse_id(&id)?;
            let v: serde_json::Value = api
                .send(
                    "POST",
                    &format!("/api/v1/objects/{id}/grants"),
                    &[],
                    None,
                    Some(serde_json::json!({ "did": did })),
                )?
                .body_mut()
                .read_json()?;
            note!("{did} may now read {id}");
            say!("{}", v["grant"].as_str().unwrap_or_default())?;
            Ok(())
        }
        DataCommand::Export { id, output } => {
            let id = files::parse_id(&id)?;
            let o: Object = api.get_json(&format!("/api/v1/objects/{id}/info"))?;
            let mut resp = api.get(&format!("/api/v1/objects/{id}/car"))?;
            let body = resp.body_mut().with_config().limit(u64::MAX).reader();
            copy_out(
                body,
                o.stored_bytes,
                Some(&output),
                &format!("exporting {id}"),
            )?;
            note!("exported {id} to {}", output.display());
            Ok(())
        }
        DataCommand::Import { file, json } => {
            let f = files::open_file(&file)?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut input: Box<dyn io::Read> =
                match progress_bar(len, format!("verifying {}", file.display())) {
                    Some(bar) => Box::new(bar.wrap_read(f)),
                    None => Box::new(f),
                };
            let v: serde_json::Value = api
                .send("POST", "/api/v1/cars", &[], Some(&mut input), None)
                .with_context(|| format!("importing {}", file.display()))?
                .body_mut()
                .read_json()?;
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            let o: Object = api.get_json(&format!("/api/v1/objects/{id}/info"))?;
            if json {
                say!("{}", serde_json::to_string(&object_json(&o))?)?;
            } else {
                match (&o.name, o.size) {
                    (Some(n), Some(s)) => note!("imported {n} ({})", output::bytes(s)),
                    _ => note!(
                        "imported encrypted object from {} (this node has no read grant for it)",
                        o.owner
                    ),
                }
                say!("{id}")?;
            }
            Ok(())
        }
    }
}

/// Copy a response body to a file (atomically) or to standard output.
fn copy_out(
    mut body: impl io::Read,
    size: u64,
    output: Option<&Path>,
    message: &str,
) -> anyhow::Result<()> {
    match output {
        None => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            io::copy(&mut body, &mut w).context("the node's answer broke off")?;
            w.flush()?;
        }
        Some(path) => write_atomically(path, size, message.to_owned(), |mut f| {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = body.read(&mut buf).context("the node's answer broke off")?;
                if n == 0 {
                    break;
                }
                f.write_all(&buf[..n])?;
            }
            Ok(f)
        })?,
    }
    Ok(())
}

/// `sov peers`
pub fn peers(api: &Api, json: bool) -> anyhow::Result<()> {
    let peers: Vec<Peer> = api.get_json("/api/v1/peers")?;
    if json {
        say!("{}", serde_json::to_string_pretty(&peers)?)?;
        return Ok(());
    }
    if peers.is_empty() {
        note!("no peers connected yet");
        return Ok(());
    }
    say!("{:<54} {:<58} ADDRESS", "PEER ID", "DID")?;
    for p in &peers {
        say!(
            "{:<54} {:<58} {}",
            p.peer_id,
            p.did.as_deref().unwrap_or("-"),
            p.addrs.first().map(String::as_str).unwrap_or("-")
        )?;
    }
    Ok(())
}
