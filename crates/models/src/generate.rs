//! Text generation: a loaded language model (weights, tokeniser, chat template) and the
//! loop that feeds a prompt, samples tokens and hands out text as it forms, stopping at an
//! end-of-generation token, a stop sequence or the token limit.
//!
//! Text is streamed in whole UTF-8 characters (a token may end inside one), and text that
//! could be the start of a stop sequence is held back until it is known not to be one, so a
//! stop sequence never reaches the caller.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::{
    Error, Result,
    chat::{ChatTemplate, Message},
    gguf::Gguf,
    llama::Llama,
    sample::{Sampler, SamplingParams},
    tokenizer::Tokenizer,
};

/// Prompt tokens fed through the network together (bounds the memory of a long prompt).
pub const PROMPT_BATCH: usize = 256;

/// A language model ready to generate.
pub struct LanguageModel {
    /// The network.
    pub llama: Llama,
    /// Its tokeniser.
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Finished generations' keys and values (see [`PromptCache`]).
    cache: Arc<PromptCache>,
}

/// Finished generations that are kept at most, and the bytes of keys and values they may
/// hold together; the least recently finished go first.
const CACHED_SESSIONS: usize = 4;
const CACHED_BYTES: usize = 256 << 20;

/// The prompt cache: the keys and values of the last few generations, kept when they end,
/// so that a prompt that begins as one of them did (the same system prompt, a chat that goes
/// on, the same request again) reads only what follows the shared part. The values are the
/// ones reading the whole prompt gives (a token's keys and values depend only on the tokens
/// before it), so answers are the same with and without it; OpenAI's
/// `usage.prompt_tokens_details.cached_tokens` counts what was reused. A request reuses only
/// what requests of its own [`Request::cache_scope`] left: how fast a prompt is read, and
/// `cached_tokens`, would tell one client what another asked.
#[derive(Default)]
struct PromptCache {
    /// Each with its scope and the tokens its keys and values are of; the most recent last.
    kept: Mutex<Vec<(String, Vec<u32>, crate::llama::Session)>>,
}

impl PromptCache {
    /// The kept session of `scope` that shares the longest beginning with `prompt` (taken
    /// out), and how many tokens they share; none if none shares any.
    fn take(&self, scope: &str, prompt: &[u32]) -> Option<(usize, crate::llama::Session)> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let (i, shared) = kept
            .iter()
            .enumerate()
            .filter(|(_, (s, _, _))| s == scope)
            .map(|(i, (_, tokens, _))| {
                let n = tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, n)
            })
            .max_by_key(|&(_, n)| n)?;
        if shared == 0 {
            return None;
        }
        Some((shared, kept.remove(i).2))
    }

    /// Keep a finished session of `scope` whose keys and values are of `tokens`.
    fn put(&self, scope: String, tokens: Vec<u32>, session: crate::llama::Session) {
        if session.is_empty() {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.push((scope, tokens, session));
        while kept.len() > CACHED_SESSIONS
            || kept.iter().map(|(_, _, s)| s.kv_bytes()).sum::<usize>() > CACHED_BYTES
        {
            kept.remove(0);
        }
    }
}

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop sequence.
    Stop,
    /// The token limit or the end of the context.
    Length,
    /// The caller asked to stop (e.g. a client went away).
    Cancelled,
}

impl Finish {
    /// The name OpenAI's API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length | Finish::Cancelled => "length",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt tokens (see [`LanguageModel::chat_prompt`] and [`LanguageModel::text_prompt`]).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Text that ends the generation (not included in the output).
    pub stop: Vec<String>,
    /// Report each generated token's log-probability and this many most likely
    /// alternatives (`None`: none; at most [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
    /// Keep the output to this grammar (JSON, or JSON a schema describes).
    pub constraint: Option<Arc<crate::constrain::Grammar>>,
    /// Whose prompt cache it may use: requests with the same scope reuse each other's
    /// keys and values, no others (the gateway gives each client its own; "" is the owner's).
    pub cache_scope: String,
}

/// Most alternatives reported per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability under the model (before sampling settings and
/// penalties, as llama.cpp reports them), with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub id: u32,
    /// Its bytes (a token may end inside a UTF-8 character).
    pub bytes: Vec<u8>,
    /// ln p(token).
    pub logprob: f32,
    /// The most likely tokens at this step: id, bytes, ln p.
    pub top: Vec<(u32, Vec<u8>, f32)>,
}

/// What came out.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The generated text.
    pub text: String,
    /// The generated tokens (including an end token, if one ended it).
    pub tokens: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Of those, how many were not read again: their keys and values came from an earlier
    /// generation that began the same way (the prompt cache).
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// Seconds spent reading the prompt.
    pub prompt_seconds: f64,
    /// Seconds spent generating.
    pub decode_seconds: f64,
    /// Per generated token (not the end-of-generation token), if the request asked.
    pub logprobs: Vec<TokenLogprob>,
}

impl Output {
    /// Prompt tokens read per second (those from the prompt cache were not read).
    pub fn prompt_tokens_per_s(&self) -> f64 {
        rate(
            self.prompt_tokens.saturating_sub(self.cached_tokens),
            self.prompt_seconds,
        )
    }

    /// Generated tokens per second (the first token comes from the prompt pass, so it is
    /// not counted).
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(
            self.completion_tokens.saturating_sub(1),
            self.decode_seconds,
        )
    }
}

/// ln softmax of logits, the normaliser summed in f64 (as tests and the gateway report
/// log-probabilities).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

impl LanguageModel {
    /// Load from a parsed GGUF file and its bytes.
    pub fn from_gguf(g: &Gguf, bytes: &[u8]) -> Result<Self> {
        let llama = Llama::from_gguf(g, bytes)?;
        let tokenizer = Tokenizer::from_gguf(g)?;
        let template = ChatTemplate::from_gguf(g, &tokenizer)?;
        Ok(LanguageModel {
            llama,
            tokenizer,
            template,
            cache: Arc::default(),
        })
    }

    /// Check what a GGUF table says (architecture, sizes, tokeniser, chat template), without
    /// its tensors' bytes: what an import checks before it streams the weights in. The
    /// tensors themselves are checked when the model loads.
    pub fn check_table(g: &Gguf) -> Result<()> {
        crate::llama::Config::from_gguf(g)?;
        let tokenizer = Tokenizer::from_gguf(g)?;
        ChatTemplate::from_gguf(g, &tokenizer)?;
        Ok(())
    }

    /// Check that `source` can serve as this GGUF file's chat template: it parses, and it
    /// renders a one-message chat.
    pub fn check_template(g: &Gguf, source: &str) -> Result<()> {
        let tokenizer = Tokenizer::from_gguf(g)?;
        ChatTemplate::from_gguf_or(g, &tokenizer, Some(source))?
            .render(&[Message::new("user", "Hello")], true)
            .map(|_| ())
    }

    /// Use `source` as the chat template instead of the file's own (its BOS and EOS texts
    /// kept).
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        self.template = self.template.with_source(source)?;
        Ok(())
    }

    /// Load a GGUF file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let g = Gguf::parse(bytes)?;
        Self::from_gguf(&g, bytes)
    }

    /// Compute threads for the matrix products (1: this thread only).
    pub fn set_threads(&mut self, n: usize) {
        self.llama.set_threads(n);
    }

    /// The model's context length.
    pub fn context_length(&self) -> usize {
        self.llama.config.n_ctx
    }

    /// Prompt tokens for a conversation, through the chat template, ending where the
    /// assistant's answer starts. Special tokens written by the template become their ids;
    /// special tokens inside a message's text do too (as in llama.cpp's server).
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.chat_prompt_with_tools(messages, None)
    }

    /// [`Self::chat_prompt`] for a request that may call `tools`: in the template's own tool
    /// syntax where it has one, else described in the system message (see
    /// [`crate::tools`]). Earlier calls and results in `messages` are written either way.
    pub fn chat_prompt_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&crate::tools::Tools>,
    ) -> Result<Vec<u32>> {
        let syntax = self.template.tool_syntax();
        let (messages, listed) = crate::tools::prompt_messages(messages, tools, syntax);
        let text = self
            .template
            .render_with_tools(&messages, listed.as_ref(), true)?;
        self.text_prompt_special(&text)
    }

    /// The grammar a call of `tools` is held to, in this model's way of calling them.
    pub fn tool_grammar(&self, tools: &crate::tools::Tools) -> Result<crate::constrain::Grammar> {
        tools.grammar(self.template.tool_syntax())
    }

    /// Prompt tokens for plain text (a BOS first if the model asks for one); special tokens
    /// in `text` are plain text.
    pub fn text_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut out: Vec<u32> = self.tokenizer.bos_to_add().into_iter().collect();
        out.extend(self.tokenizer.encode(text)?);
        Ok(out)
    }

    /// A prompt given as token ids, taken as they are (no BOS added), each checked against
    /// the vocabulary.
    pub fn token_prompt(&self, ids: &[u32]) -> Result<Vec<u32>> {
        let vocab = self.tokenizer.len();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is not in the vocabulary (0 to {})",
                vocab.saturating_sub(1)
            )));
        }
        Ok(ids.to_vec())
    }

    fn text_prompt_special(&self, text: &str) -> Result<Vec<u32>> {
        let mut out: Vec<u32> = self.tokenizer.bos_to_add().into_iter().collect();
        let body = self.tokenizer.encode_special(text)?;
        // A template that writes the BOS itself must not get a second one.
        if !out.is_empty() && body.first() == out.first() {
            out.clear();
        }
        out.extend(body);
        Ok(out)
    }

    /// Generate. `on_text` receives text as it forms; returning `false` stops generation
    /// (finish reason [`Finish::Cancelled`]).
    pub fn generate(&self, req: &Request, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Output> {
        self.generate_while(req, on_text, &|| true)
    }

    /// [`Self::generate`], asking `keep_going` between prompt batches and before each new
    /// token: `false` stops at once (finish reason [`Finish::Cancelled`]), so a long prompt
    /// whose client has gone, or whose time is up, does not hold the model for minutes.
    pub fn generate_while(
        &self,
        req: &Request,
        on_text: &mut dyn FnMut(&str) -> bool,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Output> {
        self.generate_with(req, &mut |t, _| on_text(t), keep_going)
    }

    /// [`Self::generate_while`], giving with each piece of text the log-probabilities of the
    /// tokens that made it (when [`Request::logprobs`] asks for them): a streamed answer can
    /// carry them chunk by chunk. Tokens whose text is never shown (a stop sequence) give
    /// theirs to no piece.
    pub fn generate_with(
        &self,
        req: &Request,
        on_text: &mut dyn FnMut(&str, &[TokenLogprob]) -> bool,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Output> {
        let mut seq = self.sequence(req.clone())?;
        loop {
            if seq.is_finished() {
                break;
            }
            // Asked before each part of the prompt and before each new token.
            let ask = seq.wants_sample() || seq.in_prompt();
            if ask && !keep_going() {
                seq.cancel();
                break;
            }
            if seq.wants_sample() {
                seq.sample(self, on_text);
            } else {
                self.feed(&mut [(&mut seq, PROMPT_BATCH)])?;
            }
        }
        Ok(seq.output(on_text))
    }

    /// A generation that runs step by step: feed it ([`Self::feed`], with others), and
    /// [`Sequence::sample`] when it asks. The request is checked here.
    pub fn sequence(&self, req: Request) -> Result<Sequence> {
        req.sampling.check().map_err(Error::Input)?;
        if req.prompt.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        let ctx = self.context_length();
        if req.prompt.len() >= ctx {
            return Err(Error::ContextLength(format!(
                "the prompt has {} tokens; this model's context holds {ctx}",
                req.prompt.len()
            )));
        }
        let vocab = self.llama.config.n_vocab;
        if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!(
                "token {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let budget = req.max_tokens.min(ctx - req.prompt.len());
        let room = req.prompt.len() + budget;
        // At least the prompt's last token is read again: its logits start the answer.
        let (session, cached) = match self.cache.take(&req.cache_scope, &req.prompt) {
            Some((shared, mut session)) => {
                let n = shared.min(req.prompt.len() - 1);
                session.rewind(n, room, &self.llama);
                (session, n)
            }
            None => (self.llama.session(room), 0),
        };
        Ok(Sequence {
            session,
            cache: self.cache.clone(),
            cached,
            sampler: Sampler::new(req.sampling.clone()),
            history: req.prompt.clone(),
            stream: TextStream::new(req.stop.clone()),
            matcher: req
                .constraint
                .as_ref()
                .map(|g| crate::constrain::Matcher::new(g.clone())),
            top_n: req.logprobs.map(|n| n.min(MAX_TOP_LOGPROBS)),
            budget,
            fed: cached,
            next: None,
            logits: None,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            given_lp: 0,
            finish: None,
            started: Instant::now(),
            prompt_seconds: 0.0,
            decoding: None,
            req,
        })
    }

    /// Feed each sequence what it waits for (its prompt's next part, at most the given
    /// number of tokens, or its last sampled token) through the network together: the
    /// weights are read once for all of them. Sequences that wait for nothing (finished, or
    /// asking to sample) are left as they are. An error (a context that cannot hold the
    /// tokens, which [`Self::sequence`] rules out) leaves every sequence as it was.
    pub fn feed(&self, seqs: &mut [(&mut Sequence, usize)]) -> Result<()> {
        let mut inputs: Vec<(&mut crate::llama::Session, &[u32])> = Vec::new();
        let mut which = Vec::new();
        for (i, (seq, max_prompt)) in seqs.iter_mut().enumerate() {
            let Sequence {
                session,
                req,
                fed,
                next,
                finish,
                logits,
                ..
            } = &mut **seq;
            if finish.is_some() || logits.is_some() {
                continue;
            }
            let tokens: &[u32] = match next {
                Some(t) => std::slice::from_ref(t),
                None => &req.prompt[*fed..(*fed + (*max_prompt).max(1)).min(req.prompt.len())],
            };
            if tokens.is_empty() {
                continue;
            }
            inputs.push((session, tokens));
            which.push(i);
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let out = self.llama.forward_multi(&mut inputs)?;
        let counts: Vec<usize> = inputs.iter().map(|(_, t)| t.len()).collect();
        drop(inputs);
        for ((i, logits), n) in which.into_iter().zip(out).zip(counts) {
            let seq = &mut *seqs[i].0;
            if seq.next.take().is_none() {
                seq.fed += n;
                if seq.fed < seq.req.prompt.len() {
                    continue;
                }
                seq.prompt_seconds = seq.started.elapsed().as_secs_f64();
                seq.decoding = Some(Instant::now());
            }
            seq.logits = Some(logits);
        }
        Ok(())
    }
}

/// One generation in progress (see [`LanguageModel::sequence`]): its prompt is read in
/// parts, then each step samples a token from the logits and, unless it ended, waits for
/// that token to be fed. Several sequences fed together decode together.
pub struct Sequence {
    req: Request,
    session: crate::llama::Session,
    /// Where its session goes when it ends.
    cache: Arc<PromptCache>,
    /// Prompt tokens whose keys and values came from the cache.
    cached: usize,
    sampler: Sampler,
    history: Vec<u32>,
    stream: TextStream,
    matcher: Option<crate::constrain::Matcher>,
    top_n: Option<usize>,
    /// Most tokens it may generate (its limit, or what the context holds).
    budget: usize,
    /// Prompt tokens fed so far.
    fed: usize,
    /// A sampled token waiting to be fed.
    next: Option<u32>,
    /// Logits waiting to be sampled from.
    logits: Option<Vec<f32>>,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    /// Log-probabilities already handed out with a piece of text.
    given_lp: usize,
    finish: Option<Finish>,
    started: Instant,
    prompt_seconds: f64,
    /// When its first token was sampled from (the prompt was all read).
    decoding: Option<Instant>,
}

impl Sequence {
    /// Whether it ended (see [`Self::output`]).
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Whether its next step is [`Self::sample`] (else it waits to be fed).
    pub fn wants_sample(&self) -> bool {
        self.finish.is_none() && self.logits.is_some()
    }

    /// Whether it is still reading its prompt.
    pub fn in_prompt(&self) -> bool {
        self.finish.is_none() && self.fed < self.req.prompt.len()
    }

    /// Prompt tokens not read yet.
    pub fn prompt_left(&self) -> usize {
        self.req.prompt.len() - self.fed.min(self.req.prompt.len())
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len()
    }

    /// Stop it here (finish reason [`Finish::Cancelled`]).
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(Finish::Cancelled);
    }

    /// Stop it here as if its limit was reached (finish reason [`Finish::Length`]).
    pub fn cut(&mut self) {
        self.finish.get_or_insert(Finish::Length);
    }

    /// Sample the next token from the logits fed last, and hand `on_text` the text it
    /// completes (with its tokens' log-probabilities, when asked for); `on_text` returning
    /// `false` cancels. Does nothing unless [`Self::wants_sample`].
    pub fn sample(
        &mut self,
        model: &LanguageModel,
        on_text: &mut dyn FnMut(&str, &[TokenLogprob]) -> bool,
    ) {
        if self.finish.is_some() {
            return;
        }
        let Some(mut logits) = self.logits.take() else {
            return;
        };
        if self.tokens.len() >= self.budget {
            self.finish = Some(Finish::Length);
            return;
        }
        let log_softmax = self.top_n.map(|_| log_softmax(&logits));
        let next = match &mut self.matcher {
            None => self.sampler.sample(&mut logits, &self.history),
            Some(m) => match model.constrained(m, &mut self.sampler, &mut logits, &self.history) {
                Some(t) => t,
                // Nothing may come next (the grammar is finished and the model has no end
                // token it may use): stop here.
                None => {
                    self.finish = Some(Finish::Stop);
                    return;
                }
            },
        };
        let tok = &model.tokenizer;
        if let Some(m) = &mut self.matcher
            && !tok.is_eog(next)
        {
            m.advance(&tok.piece_bytes(next));
        }
        self.tokens.push(next);
        self.history.push(next);
        if tok.is_eog(next) {
            self.finish = Some(Finish::Stop);
            return;
        }
        if let (Some(n), Some(lp)) = (self.top_n, log_softmax) {
            let mut order: Vec<u32> = (0..lp.len() as u32).collect();
            let k = n.min(order.len());
            if k > 0 {
                order.select_nth_unstable_by(k - 1, |a, b| {
                    lp[*b as usize].total_cmp(&lp[*a as usize])
                });
                order.truncate(k);
                order.sort_by(|a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
            } else {
                order.clear();
            }
            self.logprobs.push(TokenLogprob {
                id: next,
                bytes: tok.piece_bytes(next),
                logprob: lp.get(next as usize).copied().unwrap_or(f32::NEG_INFINITY),
                top: order
                    .into_iter()
                    .map(|t| (t, tok.piece_bytes(t), lp[t as usize]))
                    .collect(),
            });
        }
        let (text, stopped) = self.stream.push(&tok.piece_bytes(next));
        if !text.is_empty() && !on_text(&text, &self.logprobs[self.given_lp..]) {
            self.finish = Some(Finish::Cancelled);
            return;
        }
        if !text.is_empty() {
            self.given_lp = self.logprobs.len();
        }
        if stopped {
            self.finish = Some(Finish::Stop);
        } else if self.tokens.len() >= self.budget {
            self.finish = Some(Finish::Length);
        } else {
            self.next = Some(next);
        }
    }

    /// The end: text held back (a possible stop sequence that was not one) goes to
    /// `on_text` unless it was cancelled, and the whole output is returned. A sequence
    /// that had not finished ends here as cancelled.
    pub fn output(mut self, on_text: &mut dyn FnMut(&str, &[TokenLogprob]) -> bool) -> Output {
        let finish = *self.finish.get_or_insert(Finish::Cancelled);
        if finish != Finish::Cancelled {
            let rest = self.stream.finish();
            if !rest.is_empty() {
                on_text(
                    &rest,
                    &self.logprobs[self.given_lp.min(self.logprobs.len())..],
                );
            }
        }
        let prompt_seconds = match self.decoding {
            Some(_) => self.prompt_seconds,
            None => self.started.elapsed().as_secs_f64(),
        };
        // The tokens fed so far (the prompt, then each sampled token once it was fed) are
        // what the session's keys and values are of.
        let mut history = std::mem::take(&mut self.history);
        history.truncate(self.session.len());
        self.cache.put(
            std::mem::take(&mut self.req.cache_scope),
            history,
            std::mem::take(&mut self.session),
        );
        Output {
            cached_tokens: self.cached,
            text: self.stream.text,
            prompt_tokens: self.req.prompt.len(),
            completion_tokens: self.tokens.len(),
            tokens: self.tokens,
            finish,
            prompt_seconds,
            decode_seconds: self.decoding.map_or(0.0, |d| d.elapsed().as_secs_f64()),
            logprobs: self.logprobs,
        }
    }
}

impl LanguageModel {
    /// Sample the next token under `m`: as usual if the matcher allows the choice; else
    /// every token it refuses is masked and the sampler draws again. End-of-generation
    /// tokens are allowed once the output is one whole value. `None`: no token may come.
    fn constrained(
        &self,
        m: &crate::constrain::Matcher,
        sampler: &mut Sampler,
        logits: &mut [f32],
        history: &[u32],
    ) -> Option<u32> {
        let allowed = |t: u32| -> bool {
            if self.tokenizer.is_eog(t) {
                m.can_end()
            } else {
                m.allows(&self.tokenizer.piece_bytes(t))
            }
        };
        let mut first = logits.to_vec();
        let t = sampler.sample(&mut first, history);
        if allowed(t) {
            return Some(t);
        }
        let firsts = m.first_bytes();
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let ok = if self.tokenizer.is_eog(id) {
                m.can_end()
            } else {
                let bytes = self.tokenizer.piece_bytes(id);
                bytes.first().is_some_and(|b| firsts[*b as usize]) && m.allows(&bytes)
            };
            if ok {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            return None;
        }
        let t = sampler.sample(logits, history);
        allowed(t).then_some(t)
    }
}

/// Turns token bytes into text for the caller: whole characters only, stop sequences cut
/// off and never shown.
struct TextStream {
    stop: Vec<String>,
    /// Bytes of a character not yet complete.
    partial: Vec<u8>,
    /// All text formed so far (up to a stop sequence, once one is found).
    text: String,
    /// How much of `text` the caller has.
    given: usize,
    stopped: bool,
}

impl TextStream {
    fn new(stop: Vec<String>) -> Self {
        TextStream {
            stop,
            partial: Vec::new(),
            text: String::new(),
            given: 0,
            stopped: false,
        }
    }

    /// Add a token's bytes; returns the text that may now be given out and whether a stop
    /// sequence was reached.
    fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Bytes that can never be UTF-8: show them as U+FFFD and go on.
            Err(_) => {
                let s = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.text.push_str(&s);
                return self.release();
            }
        };
        let done: Vec<u8> = self.partial.drain(..valid).collect();
        self.text
            .push_str(std::str::from_utf8(&done).unwrap_or_default());
        self.release()
    }

    fn release(&mut self) -> (String, bool) {
        // Text that could begin a stop sequence is never given out, so a new match starts
        // at or after `given`; searching from a stop sequence's length earlier is a margin.
        let longest = self.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.given.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = found {
            self.text.truncate(at.max(self.given));
            self.stopped = true;
            let out = self.text[self.given..].to_string();
            self.given = self.text.len();
            return (out, true);
        }
        // Hold back the longest tail that could still grow into a stop sequence.
        let mut hold = 0;
        for s in &self.stop {
            for (i, _) in s.char_indices().skip(1) {
                if i > hold && self.text.ends_with(&s[..i]) {
                    hold = i;
                }
            }
        }
        let end = self.text.len() - hold;
        let end = end.max(self.given);
        let out = self.text[self.given..end].to_string();
        self.given = end;
        (out, false)
    }

    /// The end: what was held back is given out.
    fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        if !self.partial.is_empty() {
            let s = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            self.text.push_str(&s);
        }
        let out = self.text[self.given..].to_string();
        self.given = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]], stop: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(stop);
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let (t, st) = s.push(p);
            out.push(t);
            if st {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push(s.finish());
        }
        (out, s.text.clone(), stopped)
    }

    #[test]
    fn characters_split_across_tokens_come_out_whole() {
        let e = "é".as_bytes();
        let (out, text, _) = run(&[b"caf", &e[..1], &e[1..], b"!"], &[]);
        assert_eq!(out, ["caf", "", "é", "!", ""]);
        assert_eq!(text, "café!");
    }

    #[test]
    fn stop_sequences_are_cut_and_never_shown() {
        let (out, text, stopped) =
            run(&[b"Hello", b" wor", b"ld\n\nUs", b"er: hi"], &["\n\nUser:"]);
        assert!(stopped);
        assert_eq!(text, "Hello world");
        assert_eq!(out.concat(), "Hello world");
        // The held-back "ld\n\nUs" tail was never given out early.
        assert!(out.iter().all(|o| !o.contains('\n')));
        // A near miss is released in the end.
        let (out, text, stopped) = run(&[b"a\n\nU", b"ser"], &["\n\nUser:"]);
        assert!(!stopped);
        assert_eq!(text, "a\n\nUser");
        assert_eq!(out.concat(), "a\n\nUser");
    }

    #[test]
    fn a_stop_sequence_inside_one_token_is_found() {
        let (out, text, stopped) = run(&[b"x", b"yEND", b"z"], &["END"]);
        assert!(stopped);
        assert_eq!(text, "xy");
        assert_eq!(out.concat(), "xy");
    }
}
