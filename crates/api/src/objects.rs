//! `/api/v1/objects` and `/api/v1/cars`: objects in and out, streamed both ways. The node
//! runs the store work on its blocking pool; bytes cross between it and the HTTP body over
//! small bounded channels, so a 1 GiB object never sits in memory.

use std::{
    future::Future,
    io::{self, Read, Write},
};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did};
use sov_node::{AddOptions, ObjectEntry};
use tokio::sync::mpsc;

use crate::{ApiError, AppState};

/// Body pieces in flight between the HTTP body and the store.
const PIPE: usize = 8;
/// Bytes per piece sent to the client.
const PIECE: usize = 1 << 20;

pub(crate) fn parse_id(id: &str) -> Result<ContentId, ApiError> {
    id.parse().map_err(|e| {
        ApiError::bad_request(format!("{} is not an object id: {e}", sov_core::quote(id)))
    })
}

/// An object as the API lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Object {
    /// Object id.
    pub id: String,
    /// Owner DID.
    pub owner: String,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Chunks.
    pub chunks: usize,
    /// Bytes of its blocks here.
    pub stored_bytes: u64,
    /// Whether this node can read it.
    pub readable: bool,
    /// Name (if readable).
    pub name: Option<String>,
    /// Media type (if readable).
    pub media_type: Option<String>,
    /// Plaintext size (if readable).
    pub size: Option<u64>,
    /// Replicas wanted, if this node pins it.
    pub replicas: Option<u32>,
    /// Whether this node keeps it as a replica for someone else.
    pub replica: bool,
}

fn object(e: &ObjectEntry) -> Object {
    let (o, pin) = (&e.info, e.pin);
    Object {
        id: o.id.to_string(),
        owner: o.owner.to_string(),
        created: o.created,
        chunks: o.chunks,
        stored_bytes: o.stored_bytes,
        readable: o.meta.is_some(),
        name: o.meta.as_ref().map(|m| m.name.clone()),
        media_type: o.meta.as_ref().map(|m| m.media_type.clone()),
        size: o.meta.as_ref().map(|m| m.size),
        replicas: pin.map(|p| p.replicas),
        replica: pin.is_some_and(|p| p.replica),
    }
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Object>>, ApiError> {
    let out = state.node.objects().await?;
    Ok(Json(out.iter().map(object).collect()))
}

pub(crate) async fn info(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Object>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(object(&state.node.object(id).await?)))
}

/// Query of `POST /api/v1/objects`.
#[derive(Debug, Deserialize)]
pub(crate) struct AddQuery {
    name: Option<String>,
    media_type: Option<String>,
    replicas: Option<u32>,
}

/// Answer of `POST /api/v1/objects`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddedObject {
    /// The new object's id.
    pub id: String,
    /// Plaintext bytes.
    pub size: u64,
    /// Chunks.
    pub chunks: usize,
    /// Chunks not stored before.
    pub new_chunks: usize,
    /// Replicas wanted.
    pub replicas: u32,
    /// The peers that pinned it.
    pub holders: Vec<String>,
}

/// A `Read` over body pieces arriving on a channel (used on a blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Feed an HTTP body into a [`ChannelReader`].
fn body_reader(body: Body) -> ChannelReader {
    let (tx, rx) = mpsc::channel(PIPE);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(piece) = stream.next().await {
            let piece =
                piece.map_err(|e| io::Error::other(format!("reading the request body: {e}")));
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                return;
            }
        }
    });
    ChannelReader {
        rx,
        current: Bytes::new(),
    }
}

pub(crate) async fn add(
    State(state): State<AppState>,
    Query(q): Query<AddQuery>,
    body: Body,
) -> Result<(StatusCode, Json<AddedObject>), ApiError> {
    let opts = AddOptions {
        name: q.name.unwrap_or_default(),
        media_type: q
            .media_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let replicas = q.replicas.unwrap_or(state.node.config().replicas);
    let (added, holders) = state
        .node
        .add(body_reader(body), opts, Some(replicas))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AddedObject {
            id: added.id.to_string(),
            size: added.size,
            chunks: added.chunks,
            new_chunks: added.new_chunks,
            replicas,
            holders: holders.iter().map(|p| p.to_string()).collect(),
        }),
    ))
}

/// A `Write` that sends pieces to an HTTP body (used on a blocking thread).
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let piece = Bytes::from(std::mem::take(&mut self.buf));
            self.tx
                .blocking_send(Ok(piece))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        }
        Ok(())
    }
}

/// Stream what `produce` writes (the node writes on its blocking pool, then flushes) as the
/// response body. An error after the first byte aborts the body, so the client sees a
/// broken transfer rather than a short file.
fn stream_body<Fut>(produce: impl FnOnce(ChannelWriter) -> Fut) -> Body
where
    Fut: Future<Output = Result<ChannelWriter, sov_node::Error>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(PIPE);
    let writer = ChannelWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(PIECE),
    };
    let work = produce(writer);
    tokio::spawn(async move {
        if let Err(e) = work.await {
            let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
        }
    });
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

pub(crate) async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let node = state.node.clone();
    // An object not stored here streams out while it is fetched.
    let reading = node.open_read(id).await?;
    let meta = reading.meta.clone();
    let body = stream_body(move |w| async move { node.read_into(reading, w).await });
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    if let Ok(v) = HeaderValue::from_str(&meta.media_type) {
        h.insert("x-sov-media-type", v);
    }
    if let Ok(v) = HeaderValue::from_str(&meta.name) {
        h.insert("x-sov-name", v);
    }
    Ok(resp)
}

pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.node.remove(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /api/v1/objects/{id}/grants`.
#[derive(Debug, Deserialize)]
pub(crate) struct GrantBody {
    did: String,
}

pub(crate) async fn grant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    crate::error::JsonBody(body): crate::error::JsonBody<GrantBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let did: Did = body.did.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "{} is not a did:key: {e}",
            sov_core::quote(&body.did)
        ))
    })?;
    let gid = state.node.grant(id, did).await?;
    Ok(Json(
        serde_json::json!({ "object": id.to_string(), "reader": did.to_string(), "grant": gid.to_string() }),
    ))
}

pub(crate) async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // Fail with a status before streaming if the object is not here.
    state.node.object(id).await?;
    let node = state.node.clone();
    let body = stream_body(move |w| async move { node.export_car(id, w).await });
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.ipld.car"),
    );
    Ok(resp)
}

pub(crate) async fn import(
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = state.node.import_car(body_reader(body)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id.to_string() })),
    ))
}
