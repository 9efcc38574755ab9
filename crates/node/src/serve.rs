//! Serving models: an actor that owns the loaded models, one worker per model fed by a
//! bounded queue; a language model's worker decodes its requests together.
//!
//! ```text
//!   Node::generate / embed ──Submit──▶ serve actor ──job──▶ worker (blocking pool, one per model)
//!   Node::remove_model ─────Evict───▶  (loaded models,      loads from the store once, then
//!                                       LRU within budget)  decodes up to `parallel` requests
//!                                                           together, first come, first served
//! ```
//!
//! A request names a model; the first request starts its worker, which loads the weights
//! from the store; later requests queue there and join the running ones at the next step
//! while fewer than `[models] parallel` (4) run (see [`decode`]). The async side
//! only waits on channels, so a long generation never blocks the node: other routes, other
//! models and the network go on. Text streams back as it forms; when the receiver goes
//! away (a client disconnected) or the node stops, generation ends at the next token.
//!
//! Loaded models stay within `max_loaded_bytes` (their weights' size): starting one more
//! unloads the least recently used first. One model larger than the budget still loads,
//! alone. Removing a model always unloads it.
//!
//! Why batching: on a CPU, one decode step of a small model is bound by reading its
//! weights; requests decoded together share that read (continuous batching, as llama.cpp's
//! server does with its slots), and each gets exactly the tokens it would get alone.

use std::{collections::HashMap, sync::mpsc as std_mpsc};

use sov_core::ContentId;
use sov_models::{
    chat::Message,
    generate::{LanguageModel, Output, Request, Sequence, TokenLogprob},
    sample::SamplingParams,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::{
    Node,
    models::{self, Loaded, ModelEntry},
};

/// Requests that may wait for one model; more are refused ([`Failure::Busy`]) until the
/// queue drains.
pub const QUEUE: usize = 64;
/// Tokens of work (prompt, estimated from its length, and tokens to generate) that may wait
/// for one model; a request that would pass it is refused ([`Failure::Busy`]) unless the
/// queue is empty.
pub const QUEUED_TOKENS: usize = 32_768;
/// Text pieces in flight from a generating model to its reader.
pub const EVENTS: usize = 256;
/// Tokens generated when a request names no limit (and the context has room).
pub const DEFAULT_MAX_TOKENS: usize = 1024;
/// Commands waiting for the serve actor.
const COMMANDS: usize = 256;

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// A conversation, through the model's chat template.
    Chat(Vec<Message>),
    /// Plain text.
    Text(String),
    /// Token ids of the model's vocabulary, taken as they are.
    Tokens(Vec<u32>),
}

/// One generation asked of a language model.
#[derive(Debug, Clone)]
pub struct Generation {
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate (`None`: [`DEFAULT_MAX_TOKENS`] or what the context holds).
    pub max_tokens: Option<usize>,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Texts that end the generation (not shown).
    pub stop: Vec<String>,
    /// Log-probabilities of the top `n` tokens at each step.
    pub logprobs: Option<usize>,
    /// Keep the output to this grammar (`response_format`).
    pub constraint: Option<std::sync::Arc<sov_models::constrain::Grammar>>,
    /// Tools a chat may call: written into the prompt in the model's way, and the answer
    /// held to a call of one of them (or words, where the request allows) instead of
    /// `constraint`.
    pub tools: Option<std::sync::Arc<sov_models::tools::Tools>>,
    /// Whose prompt cache it may use (see [`sov_models::generate::Request::cache_scope`]):
    /// the gateway's caller, "" for the owner.
    pub cache_scope: String,
}

/// An embedding input.
#[derive(Debug, Clone)]
pub enum EmbedInput {
    /// Text, tokenised by the model.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// What a generation reports, in order.
#[derive(Debug)]
pub enum Event {
    /// Text formed (whole UTF-8 characters).
    Text(String),
    /// The log-probabilities of the tokens that made the next `Text` (when asked for).
    Logprobs(Vec<sov_models::generate::TokenLogprob>),
    /// The end: the whole output, or why it failed.
    Done(Result<Output, Failure>),
}

/// Why a job failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The request cannot be served as asked (the caller's fault).
    #[error("{0}")]
    BadRequest(String),
    /// The model's queue is full; try again shortly.
    #[error("{0}")]
    Busy(String),
    /// The node failed (loading, a worker that stopped, shutdown).
    #[error("{0}")]
    Server(String),
    /// The request's time budget ran out before its first token.
    #[error("{0}")]
    Timeout(String),
    /// An input longer than the model takes.
    #[error("{0}")]
    ContextLength(String),
}

/// Embeddings with the tokens each input took.
pub type Embedded = Result<Vec<(Vec<f32>, usize)>, Failure>;

enum Job {
    Generate {
        generation: Generation,
        events: mpsc::Sender<Event>,
        /// When the request came (its time budget counts from here).
        since: std::time::Instant,
        /// Its estimated tokens of work, counted in the queue until it ends (set when it is
        /// queued).
        work: Option<Work>,
    },
    Embed {
        inputs: Vec<EmbedInput>,
        reply: oneshot::Sender<Embedded>,
    },
}

enum Command {
    Submit {
        entry: Box<ModelEntry>,
        job: Job,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    Evict {
        id: ContentId,
        reply: oneshot::Sender<()>,
    },
    Loaded(oneshot::Sender<Vec<ContentId>>),
    /// A worker ended by itself (its model failed to load).
    Ended {
        id: ContentId,
        generation: u64,
    },
}

/// The handle to the serve actor.
pub(crate) struct Serve {
    tx: mpsc::Sender<Command>,
}

/// A job's share of its worker's queued work; given back when dropped (the job ended).
struct Work {
    tokens: usize,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The model's queued-work gauge in the metrics.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Work {
    fn drop(&mut self) {
        self.queued
            .fetch_sub(self.tokens, std::sync::atomic::Ordering::SeqCst);
        self.gauge.dec_by(self.tokens as i64);
    }
}

/// Whether a job of `tokens` may join a queue holding `before` tokens of work: within
/// [`QUEUED_TOKENS`], or alone (so one large request is never refused for good).
fn fits(before: usize, tokens: usize) -> bool {
    before == 0 || before + tokens <= QUEUED_TOKENS
}

/// Tokens of work a generation will cost: its prompt (estimated at one token per three
/// bytes, before the worker tokenises it) and the tokens it may generate.
fn estimate(g: &Generation) -> usize {
    let prompt = match &g.prompt {
        Prompt::Chat(m) => m.iter().map(|m| m.content.len() + 8).sum::<usize>() / 3,
        Prompt::Text(t) => t.len() / 3,
        Prompt::Tokens(ids) => ids.len(),
    };
    prompt + g.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
}

struct Worker {
    queue: std_mpsc::SyncSender<Job>,
    /// Tokens of work queued or running.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bytes: u64,
    last_used: u64,
    generation: u64,
}

struct Actor {
    node: Node,
    tx: mpsc::Sender<Command>,
    workers: HashMap<ContentId, Worker>,
    clock: u64,
    generations: u64,
}

impl Serve {
    /// Start the actor as one of `node`'s tasks.
    pub(crate) fn start(node: &Node) -> Self {
        let (tx, rx) = mpsc::channel(COMMANDS);
        let actor = Actor {
            node: node.clone(),
            tx: tx.clone(),
            workers: HashMap::new(),
            clock: 0,
            generations: 0,
        };
        node.spawn(actor.run(rx));
        Serve { tx }
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut stopped = self.node.stopped();
        loop {
            let cmd = tokio::select! {
                c = rx.recv() => match c { Some(c) => c, None => break },
                _ = stopped.changed() => break,
            };
            match cmd {
                Command::Submit { entry, job, reply } => {
                    let _ = reply.send(self.submit(entry, job));
                }
                Command::Evict { id, reply } => {
                    if self.workers.remove(&id).is_some() {
                        info!(model = %id, "model unloaded");
                    }
                    let _ = reply.send(());
                }
                Command::Loaded(reply) => {
                    let mut ids: Vec<(u64, ContentId)> = self
                        .workers
                        .iter()
                        .map(|(id, w)| (w.last_used, *id))
                        .collect();
                    ids.sort();
                    let _ = reply.send(ids.into_iter().map(|(_, id)| id).collect());
                }
                Command::Ended { id, generation } => {
                    if self
                        .workers
                        .get(&id)
                        .is_some_and(|w| w.generation == generation)
                    {
                        self.workers.remove(&id);
                    }
                }
            }
        }
        // Dropping the queues ends every worker after its current job.
    }

    fn submit(&mut self, entry: Box<ModelEntry>, job: Job) -> Result<(), Failure> {
        self.clock += 1;
        let id = entry.id;
        if !self.workers.contains_key(&id) {
            self.make_room(entry.manifest.weights_size);
            let worker = self.start_worker(&entry)?;
            self.workers.insert(id, worker);
        }
        let Some(w) = self.workers.get_mut(&id) else {
            return Err(Failure::Server("the model's worker is gone".into()));
        };
        w.last_used = self.clock;
        let job = match job {
            Job::Generate {
                generation,
                events,
                since,
                ..
            } => {
                let tokens = estimate(&generation);
                let before = w
                    .queued
                    .fetch_add(tokens, std::sync::atomic::Ordering::SeqCst);
                let gauge = self
                    .node
                    .metrics()
                    .queued_tokens
                    .get_or_create(&crate::metrics::label("model", &entry.manifest.name))
                    .clone();
                gauge.inc_by(tokens as i64);
                let work = Work {
                    tokens,
                    queued: w.queued.clone(),
                    gauge,
                };
                if !fits(before, tokens) {
                    return Err(Failure::Busy(format!(
                        "{} has about {before} tokens of work waiting; try again shortly",
                        entry.manifest.name
                    )));
                }
                Job::Generate {
                    generation,
                    events,
                    since,
                    work: Some(work),
                }
            }
            job => job,
        };
        match w.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(std_mpsc::TrySendError::Full(_)) => Err(Failure::Busy(format!(
                "{} has {QUEUE} requests waiting; try again shortly",
                entry.manifest.name
            ))),
            Err(std_mpsc::TrySendError::Disconnected(_)) => {
                self.workers.remove(&id);
                Err(Failure::Server(
                    "the model's worker stopped; try again".into(),
                ))
            }
        }
    }

    /// Unload the least recently used models until `bytes` more fit the budget.
    fn make_room(&mut self, bytes: u64) {
        let budget = self.node.inner.config.max_loaded_bytes;
        loop {
            let used: u64 = self.workers.values().map(|w| w.bytes).sum();
            if used.saturating_add(bytes) <= budget || self.workers.is_empty() {
                return;
            }
            let Some(oldest) = self
                .workers
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(id, _)| *id)
            else {
                return;
            };
            self.workers.remove(&oldest);
            info!(model = %oldest, used, budget, "model unloaded to stay within max_loaded_bytes");
        }
    }

    fn start_worker(&mut self, entry: &ModelEntry) -> Result<Worker, Failure> {
        let (queue, rx) = std_mpsc::sync_channel::<Job>(QUEUE);
        self.generations += 1;
        let generation = self.generations;
        let store = self
            .node
            .store()
            .map_err(|e| Failure::Server(e.to_string()))?;
        let bytes = entry.manifest.weights_size;
        let (node, entry, ended) = (self.node.clone(), entry.clone(), self.tx.clone());
        let threads = self.node.inner.config.threads.max(1);
        let spawned = self.node.spawn_blocking(move || {
            let started = std::time::Instant::now();
            let loaded = models::load(&store, &entry);
            drop(store);
            let name = &entry.manifest.name;
            let loaded = match loaded {
                Ok(Loaded::Language(mut m)) => {
                    m.set_threads(threads);
                    Loaded::Language(m)
                }
                Ok(l) => l,
                Err(e) => {
                    warn!(model = %name, "model failed to load: {e}");
                    // Answer what queued, and let the next request try again.
                    let _ = ended.try_send(Command::Ended {
                        id: entry.id,
                        generation,
                    });
                    let f = Failure::Server(format!("loading {name}: {e}"));
                    while let Ok(job) = rx.try_recv() {
                        fail(job, f.clone());
                    }
                    return;
                }
            };
            info!(model = %name, secs = started.elapsed().as_secs_f64(), kernels = sov_models::llama::Llama::kernels(), "model loaded");
            match &loaded {
                Loaded::Language(m) => decode(&node, name, m, &rx),
                _ => {
                    while let Ok(job) = rx.recv() {
                        run(&loaded, job);
                    }
                }
            }
            debug!(model = %name, "model worker ended");
        });
        if !spawned {
            return Err(Failure::Server("the node is shutting down".into()));
        }
        Ok(Worker {
            queue,
            queued: Default::default(),
            bytes,
            last_used: self.clock,
            generation,
        })
    }
}

fn failure(e: sov_models::Error) -> Failure {
    match e {
        sov_models::Error::Input(m) => Failure::BadRequest(m),
        sov_models::Error::ContextLength(m) => Failure::ContextLength(m),
        sov_models::Error::Template(m) => Failure::BadRequest(format!("chat template: {m}")),
        other => Failure::Server(other.to_string()),
    }
}

fn fail(job: Job, f: Failure) {
    match job {
        Job::Generate { events, .. } => {
            let _ = events.blocking_send(Event::Done(Err(f)));
        }
        Job::Embed { reply, .. } => {
            let _ = reply.send(Err(f));
        }
    }
}

/// Most prompt tokens read in one step while other requests decode: a newcomer's prompt
/// delays their next token by about this much work, and is read in parts.
const PROMPT_SHARE: usize = 64;

/// A generation being decoded.
struct Running {
    seq: Sequence,
    events: mpsc::Sender<Event>,
    /// When its time budget runs out.
    deadline: std::time::Instant,
    /// Why it failed, if the forward pass did.
    failed: Option<Failure>,
    /// Its share of the queued work, given back when it ends.
    _work: Option<Work>,
}

/// How many times `[models] parallel` sequences a model keeps, counting those whose reader
/// is not reading.
const STALLED_SLOTS: usize = 4;

impl Running {
    /// Whether it waits for its reader (its next token is sampled, its channel full).
    fn stalled(&self) -> bool {
        self.seq.wants_sample() && self.events.capacity() < 2
    }

    /// Whether to go on: the node runs, the client is there, the budget lasts.
    fn keep_going(&self, node: &Node) -> bool {
        !node.is_stopping() && !self.events.is_closed() && std::time::Instant::now() < self.deadline
    }
}

/// Serve a language model (continuous batching): up to `[models] parallel` requests
/// decode together, each step reading the weights once for all of them; a new request
/// joins at the next step, and a finished one leaves at once. Each step gives every
/// decoding request one token, and the oldest request still reading its prompt a part of
/// it ([`PROMPT_SHARE`] tokens while others decode, more when it is alone). A request whose
/// reader is slow (its channel full) waits without holding the others up.
fn decode(node: &Node, name: &str, m: &LanguageModel, rx: &std_mpsc::Receiver<Job>) {
    let parallel = node.inner.config.parallel.max(1);
    let metrics = node.metrics();
    let label = crate::metrics::label("model", name);
    let mut running: Vec<Running> = Vec::new();
    let mut open = true;
    loop {
        // New requests: wait for one when idle; else take what is queued, up to `parallel`.
        if running.is_empty() {
            match rx.recv() {
                Ok(job) if open => start(node, m, job, &mut running),
                _ => return,
            }
        }
        // Requests whose reader is not reading (their channel full) do not count against
        // `parallel`, so a few stalled clients cannot hold a model; all told at most
        // STALLED_SLOTS times as many sequences are kept (their caches are memory).
        loop {
            let moving = running.iter().filter(|r| !r.stalled()).count();
            if !open || moving >= parallel || running.len() >= parallel * STALLED_SLOTS {
                break;
            }
            match rx.try_recv() {
                Ok(job) => start(node, m, job, &mut running),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        let step = std::time::Instant::now();
        let mut progressed = false;
        // Each request whose reader has room samples its next token.
        let mut sampled = 0u64;
        for r in &mut running {
            if !r.keep_going(node) {
                r.seq.cancel();
            } else if r.seq.wants_sample() && r.events.capacity() >= 2 {
                let events = &r.events;
                let before = r.seq.generated();
                r.seq.sample(m, &mut |t, lp| send(node, events, t, lp));
                sampled += (r.seq.generated() - before) as u64;
                progressed = true;
            }
        }
        metrics
            .generated_tokens
            .get_or_create(&label)
            .inc_by(sampled);
        // The finished leave (once their reader has room for the end).
        let mut k = 0;
        while k < running.len() {
            let r = &running[k];
            let ended = r.seq.is_finished() || r.failed.is_some();
            let room = r.events.is_closed() || node.is_stopping() || r.events.capacity() >= 3;
            if ended && room {
                finish(node, running.remove(k));
                progressed = true;
            } else {
                k += 1;
            }
        }
        // Feed: each decoding request its last token, the oldest reading its prompt a part.
        let decoding = running
            .iter()
            .filter(|r| !r.seq.is_finished() && !r.seq.in_prompt())
            .count();
        let share = if decoding > 0 {
            PROMPT_SHARE
        } else {
            sov_models::generate::PROMPT_BATCH
        };
        let mut reading = false;
        let mut batch: Vec<(&mut Sequence, usize)> = Vec::new();
        let mut fed = Vec::new();
        for (i, r) in running.iter_mut().enumerate() {
            if r.seq.is_finished() || r.seq.wants_sample() || r.failed.is_some() {
                continue;
            }
            if r.seq.in_prompt() {
                if std::mem::replace(&mut reading, true) {
                    continue;
                }
                batch.push((&mut r.seq, share));
            } else {
                batch.push((&mut r.seq, 1));
            }
            fed.push(i);
        }
        if !batch.is_empty() {
            metrics.decode_batch.observe(batch.len() as f64);
            let result = m.feed(&mut batch);
            drop(batch);
            if let Err(e) = result {
                warn!(model = %name, "decode step failed: {e}");
                let f = failure(e);
                for i in fed {
                    running[i].failed = Some(f.clone());
                }
            }
            progressed = true;
        }
        if progressed {
            metrics
                .generation_seconds
                .get_or_create(&label)
                .inc_by(step.elapsed().as_secs_f64());
        } else {
            // Every request waits for its reader: give them a moment.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Hand a piece of text (and its tokens' log-probabilities) to the reader; `false` when
/// the reader is gone or the node stops.
fn send(node: &Node, events: &mpsc::Sender<Event>, text: &str, lp: &[TokenLogprob]) -> bool {
    !node.is_stopping()
        && (lp.is_empty() || events.try_send(Event::Logprobs(lp.to_vec())).is_ok())
        && events.try_send(Event::Text(text.to_string())).is_ok()
}

/// Take a job into the running set: a generation becomes a sequence (its prompt made and
/// checked here; a bad one is answered at once), anything else is refused.
fn start(node: &Node, m: &LanguageModel, job: Job, running: &mut Vec<Running>) {
    let Job::Generate {
        generation: g,
        events,
        since,
        work,
    } = job
    else {
        return fail(
            job,
            Failure::BadRequest("this is a language model: it does not make embeddings".into()),
        );
    };
    let deadline = since + node.inner.config.request_timeout;
    let seq = (|| {
        let prompt = match &g.prompt {
            Prompt::Chat(messages) => m.chat_prompt_with_tools(messages, g.tools.as_deref()),
            Prompt::Text(t) => m.text_prompt(t),
            Prompt::Tokens(ids) => m.token_prompt(ids),
        }
        .map_err(failure)?;
        let constraint = match &g.tools {
            Some(t) => Some(std::sync::Arc::new(m.tool_grammar(t).map_err(failure)?)),
            None => g.constraint.clone(),
        };
        let max_prompt = node.inner.config.max_prompt_tokens;
        if prompt.len() > max_prompt {
            return Err(Failure::ContextLength(format!(
                "the prompt has {} tokens; this node takes at most {max_prompt} ([models] max_prompt_tokens)",
                prompt.len()
            )));
        }
        let room = m.context_length().saturating_sub(prompt.len());
        m.sequence(Request {
            max_tokens: g.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS.min(room)),
            prompt,
            sampling: g.sampling.clone(),
            stop: g.stop.clone(),
            logprobs: g.logprobs,
            constraint,
            cache_scope: g.cache_scope.clone(),
        })
        .map_err(failure)
    })();
    match seq {
        Ok(seq) => running.push(Running {
            seq,
            events,
            deadline,
            failed: None,
            _work: work,
        }),
        Err(f) => {
            let _ = events.try_send(Event::Done(Err(f)));
        }
    }
}

/// A request's end: the text held back, then its output (or why it failed) to its reader.
fn finish(node: &Node, r: Running) {
    let Running {
        seq,
        events,
        deadline,
        failed,
        ..
    } = r;
    let mut out = seq.output(&mut |t, lp| send(node, &events, t, lp));
    let result = match failed {
        Some(f) => Err(f),
        None if std::time::Instant::now() >= deadline && !events.is_closed() => {
            if out.completion_tokens == 0 {
                Err(Failure::Timeout(format!(
                    "the request used its time budget of {} s before its first token ([models] request_timeout_secs)",
                    node.inner.config.request_timeout.as_secs()
                )))
            } else {
                out.finish = sov_models::generate::Finish::Length;
                Ok(out)
            }
        }
        None => Ok(out),
    };
    let _ = events.try_send(Event::Done(result));
}

fn run(loaded: &Loaded, job: Job) {
    match (loaded, job) {
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

impl Node {
    fn serve(&self) -> Result<&Serve, Failure> {
        self.inner
            .serve
            .get()
            .ok_or_else(|| Failure::Server("the node is shutting down".into()))
    }

    async fn submit(&self, entry: &ModelEntry, job: Job) -> Result<(), Failure> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Failure::Server("the node is shutting down".into());
        self.serve()?
            .tx
            .send(Command::Submit {
                entry: Box::new(entry.clone()),
                job,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Queue a generation on language model `entry` (loading it if needed); its text and
    /// its end arrive on the returned receiver. Refused at once when the model's queue is
    /// full (64 requests, or about [`QUEUED_TOKENS`] tokens of work). Dropping the receiver
    /// stops the generation at its next prompt batch or token; so does the time budget
    /// (`[models] request_timeout_secs`, counted from now).
    pub async fn generate(
        &self,
        entry: &ModelEntry,
        generation: Generation,
    ) -> Result<mpsc::Receiver<Event>, Failure> {
        let (events, rx) = mpsc::channel(EVENTS);
        let job = Job::Generate {
            generation,
            events,
            since: std::time::Instant::now(),
            work: None,
        };
        self.submit(entry, job).await?;
        Ok(rx)
    }

    /// Embed `inputs` with embedding model `entry` (loading it if needed).
    pub async fn embed(&self, entry: &ModelEntry, inputs: Vec<EmbedInput>) -> Embedded {
        let (reply, rx) = oneshot::channel();
        self.submit(entry, Job::Embed { inputs, reply }).await?;
        rx.await
            .unwrap_or_else(|_| Err(Failure::Server("the model's worker stopped".into())))
    }

    /// The models loaded now, least recently used first.
    pub async fn loaded_models(&self) -> Vec<ContentId> {
        let (reply, rx) = oneshot::channel();
        let Ok(serve) = self.serve() else {
            return Vec::new();
        };
        if serve.tx.send(Command::Loaded(reply)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Unload model `id` if it is loaded (its worker ends after its current job).
    pub(crate) async fn evict(&self, id: ContentId) {
        let (reply, rx) = oneshot::channel();
        let Ok(serve) = self.serve() else { return };
        if serve.tx.send(Command::Evict { id, reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_by_tokens_of_work() {
        let g = |prompt: Prompt, max_tokens| Generation {
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
            tools: None,
            cache_scope: String::new(),
        };
        let long = g(Prompt::Text("x".repeat(30_000)), Some(100));
        assert_eq!(estimate(&long), 10_100);
        assert_eq!(
            estimate(&g(Prompt::Tokens(vec![1; 50]), None)),
            50 + DEFAULT_MAX_TOKENS
        );
        // Alone, any request is taken; behind others, only within the bound.
        assert!(fits(0, 10 * QUEUED_TOKENS));
        assert!(fits(QUEUED_TOKENS - 100, 100));
        assert!(!fits(QUEUED_TOKENS - 100, 101));
    }
}
