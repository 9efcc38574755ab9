//! Serving models: one worker thread per loaded model, fed by a queue.
//!
//! A request names a model; the first request loads it from the store on the model's own
//! thread, and later requests queue there and run one after another (first come, first
//! served). The async side only waits on channels, so a long generation never blocks the
//! node: other routes, other models and the network go on. Text streams back token by
//! token; when a client goes away, its generation stops at the next token.
//!
//! Why a queue and not batching: on a CPU, one decode step of a small model is bound by
//! reading its weights from memory; batching would let several sequences share that read,
//! which is a later gain. The queue is the simple, fair first step.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, mpsc as std_mpsc},
};

use sov_core::ContentId;
use sov_models::{
    chat::Message,
    generate::{Output, Request},
    sample::SamplingParams,
};
use sov_node::{
    Node,
    models::{self, Loaded, ModelEntry},
};
use tokio::sync::{mpsc, oneshot};

/// What to generate from.
#[derive(Debug, Clone)]
pub(crate) enum Prompt {
    /// A conversation, through the model's chat template.
    Chat(Vec<Message>),
    /// Plain text.
    Text(String),
}

/// An embedding input.
#[derive(Debug, Clone)]
pub(crate) enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// Events of one generation.
#[derive(Debug)]
pub(crate) enum Event {
    /// Text formed.
    Text(String),
    /// The end: the whole output, or why it failed.
    Done(Result<Output, Failure>),
}

/// Why a job failed: the request's fault (400) or the server's (500).
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    BadRequest(String),
    Busy(String),
    Server(String),
}

pub(crate) struct GenerateJob {
    pub(crate) prompt: Prompt,
    pub(crate) max_tokens: Option<usize>,
    pub(crate) sampling: SamplingParams,
    pub(crate) stop: Vec<String>,
    pub(crate) logprobs: Option<usize>,
    pub(crate) events: mpsc::Sender<Event>,
}

pub(crate) type Embedded = Result<Vec<(Vec<f32>, usize)>, Failure>;

enum Job {
    Generate(GenerateJob),
    Embed {
        inputs: Vec<EmbedInput>,
        reply: oneshot::Sender<Embedded>,
    },
}

/// Requests that may wait for one model; more are refused (503) until the queue drains.
pub(crate) const QUEUE: usize = 64;

/// Text pieces in flight from a generating model to its HTTP answer.
pub(crate) const EVENTS: usize = 256;

/// Tokens generated when a request names no limit.
pub(crate) const DEFAULT_MAX_TOKENS: usize = 1024;

/// The loaded models and their queues.
#[derive(Clone)]
pub(crate) struct Engines {
    workers: Arc<Mutex<HashMap<ContentId, std_mpsc::SyncSender<Job>>>>,
    threads: usize,
}

fn failure(e: sov_models::Error) -> Failure {
    match e {
        sov_models::Error::Input(m) => Failure::BadRequest(m),
        sov_models::Error::Template(m) => Failure::BadRequest(format!("chat template: {m}")),
        other => Failure::Server(other.to_string()),
    }
}

impl Engines {
    /// Serve models with `threads` compute threads each.
    pub(crate) fn new(threads: usize) -> Self {
        Engines {
            workers: Arc::default(),
            threads: threads.max(1),
        }
    }

    /// Stop serving model `id` (it was removed): its thread ends after the current job.
    pub(crate) fn evict(&self, id: &ContentId) {
        if let Ok(mut w) = self.workers.lock() {
            w.remove(id);
        }
    }

    fn sender(&self, node: &Node, entry: &ModelEntry) -> std_mpsc::SyncSender<Job> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = workers.get(&entry.id) {
            return tx.clone();
        }
        let (tx, rx) = std_mpsc::sync_channel::<Job>(QUEUE);
        let store = node.store().clone();
        let id = entry.id;
        let entry = entry.clone();
        let workers_ref = self.workers.clone();
        let threads = self.threads;
        let name = format!("sov-model-{}", entry.manifest.name);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let started = std::time::Instant::now();
            let loaded = models::load(&store, &entry);
            match &loaded {
                Ok(_) => tracing::info!(
                    model = %entry.manifest.name,
                    secs = started.elapsed().as_secs_f64(),
                    "model loaded"
                ),
                Err(e) => tracing::warn!(model = %entry.manifest.name, "model failed to load: {e}"),
            }
            let loaded = match loaded {
                Ok(Loaded::Language(mut m)) => {
                    m.set_threads(threads);
                    Loaded::Language(m)
                }
                Ok(l) => l,
                Err(e) => {
                    // Answer what queued, and let the next request try again.
                    if let Ok(mut w) = workers_ref.lock() {
                        w.remove(&entry.id);
                    }
                    let f = Failure::Server(format!("loading {}: {e}", entry.manifest.name));
                    while let Ok(job) = rx.try_recv() {
                        fail(job, f.clone());
                    }
                    return;
                }
            };
            while let Ok(job) = rx.recv() {
                run(&loaded, job);
            }
        });
        if spawned.is_ok() {
            workers.insert(id, tx.clone());
        }
        tx
    }

    /// Queue a generation; events arrive on the job's channel. Refused when the model's
    /// queue is full.
    pub(crate) fn generate(
        &self,
        node: &Node,
        entry: &ModelEntry,
        job: GenerateJob,
    ) -> Result<(), Failure> {
        self.queue(node, entry, Job::Generate(job))
    }

    fn queue(&self, node: &Node, entry: &ModelEntry, job: Job) -> Result<(), Failure> {
        match self.sender(node, entry).try_send(job) {
            Ok(()) => Ok(()),
            Err(std_mpsc::TrySendError::Full(_)) => Err(Failure::Busy(format!(
                "{} has {QUEUE} requests waiting; try again shortly",
                entry.manifest.name
            ))),
            Err(std_mpsc::TrySendError::Disconnected(_)) => {
                self.evict(&entry.id);
                Err(Failure::Server(
                    "the model's worker stopped; try again".into(),
                ))
            }
        }
    }

    /// Embed inputs.
    pub(crate) async fn embed(
        &self,
        node: &Node,
        entry: &ModelEntry,
        inputs: Vec<EmbedInput>,
    ) -> Embedded {
        let (reply, rx) = oneshot::channel();
        self.queue(node, entry, Job::Embed { inputs, reply })?;
        rx.await
            .unwrap_or_else(|_| Err(Failure::Server("the model's worker stopped".into())))
    }
}

fn fail(job: Job, f: Failure) {
    match job {
        Job::Generate(g) => {
            let _ = g.events.blocking_send(Event::Done(Err(f)));
        }
        Job::Embed { reply, .. } => {
            let _ = reply.send(Err(f));
        }
    }
}

fn run(loaded: &Loaded, job: Job) {
    match (loaded, job) {
        (Loaded::Language(m), Job::Generate(g)) => {
            let result = (|| {
                let prompt = match &g.prompt {
                    Prompt::Chat(messages) => m.chat_prompt(messages),
                    Prompt::Text(t) => m.text_prompt(t),
                }
                .map_err(failure)?;
                let room = m.context_length().saturating_sub(prompt.len());
                let req = Request {
                    max_tokens: g.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS.min(room)),
                    prompt,
                    sampling: g.sampling.clone(),
                    stop: g.stop.clone(),
                    logprobs: g.logprobs,
                };
                let events = &g.events;
                m.generate(&req, &mut |t| {
                    events.blocking_send(Event::Text(t.to_string())).is_ok()
                })
                .map_err(failure)
            })();
            let _ = g.events.blocking_send(Event::Done(result));
        }
        (Loaded::Embedding(b), Job::Embed { inputs, reply }) => {
            let out = inputs
                .iter()
                .map(|i| match i {
                    EmbedInput::Text(t) => b.embed(t),
                    EmbedInput::Tokens(ids) => b.embed_ids(ids).map(|e| (e, ids.len())),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(failure);
            let _ = reply.send(out);
        }
        (Loaded::Language(_), job) => fail(
            job,
            Failure::BadRequest("this is a language model: it does not make embeddings".into()),
        ),
        (Loaded::Embedding(_), job) => fail(
            job,
            Failure::BadRequest("this is an embedding model: it does not generate text".into()),
        ),
    }
}
