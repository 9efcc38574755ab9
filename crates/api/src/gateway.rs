//! `/v1`: the OpenAI-compatible gateway. Model ids are registry names.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/models`, `GET /v1/models/{id}` | the models here |
//! | `POST /v1/chat/completions` | chat, `stream` true (SSE ending `[DONE]`) or false |
//! | `POST /v1/completions` | plain-text completion, streamed or not |
//! | `POST /v1/embeddings` | embeddings, `encoding_format` float or base64 |
//!
//! Errors have OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//! Log-probabilities (chat `logprobs`/`top_logprobs`, completions `logprobs: n`) are the
//! model's, before sampling settings; streamed, each chunk carries those of its tokens. Sampling
//! settings left out take llama.cpp's defaults (temperature 0.8, top_k 40, top_p 0.95,
//! min_p 0.05); `max_tokens` left out means up to 1,024 tokens (or the context's end).
//! `n` (1 to 8) asks for that many choices, each a generation of its own seeded apart (the
//! seed plus the choice's index); streamed, their chunks interleave, tagged by index. An input
//! longer than the model takes (a prompt past the context or `[models] max_prompt_tokens`, an
//! embedding input past the model's length) gets 400 `context_length_exceeded`, never a cut.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, Sse},
    },
};
use base64::Engine as _;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use sov_models::{
    chat::Message, constrain::Grammar, generate::Output, manifest::ModelKind,
    sample::SamplingParams, tools,
};
use sov_node::{
    models::ModelEntry,
    serve::{EmbedInput, Event, Failure, Generation, Prompt},
};

use crate::AppState;

/// An error in OpenAI's shape.
#[derive(Debug)]
pub(crate) struct OaiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    message: String,
}

impl OaiError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        OaiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param,
            message: message.into(),
        }
    }

    fn server(message: impl Into<String>) -> Self {
        OaiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: None,
            param: None,
            message: message.into(),
        }
    }

    pub(crate) fn unauthorized(message: &str, code: &'static str) -> Self {
        OaiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: Some(code),
            param: None,
            message: message.into(),
        }
    }

    fn from_failure(f: Failure) -> Self {
        match f {
            Failure::BadRequest(m) => Self::invalid(m, None),
            Failure::ContextLength(m) => OaiError {
                status: StatusCode::BAD_REQUEST,
                kind: "invalid_request_error",
                code: Some("context_length_exceeded"),
                param: Some("messages"),
                message: m,
            },
            Failure::Busy(m) => OaiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                code: Some("model_busy"),
                param: None,
                message: m,
            },
            Failure::Timeout(m) => OaiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                kind: "server_error",
                code: Some("timeout"),
                param: None,
                message: m,
            },
            other => Self::server(other.to_string()),
        }
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// `/v1` routes need `Authorization: Bearer <admin token>`; errors in OpenAI's shape.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let asked = crate::Asked::of(&state, &req);
    match asked.check(&state).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller.cache_scope());
            next.run(req).await
        }
        Err(crate::Denied::Invalid(why)) => OaiError::unauthorized(
            &format!(
                "Incorrect API key provided: {why} (use the node's admin token, in \
                 $SOV_HOME/admin.token, or an access token from /oauth/token)"
            ),
            "invalid_api_key",
        )
        .into_response(),
        Err(crate::Denied::Scope(need)) => OaiError {
            status: StatusCode::FORBIDDEN,
            kind: "invalid_request_error",
            code: Some("insufficient_scope"),
            param: None,
            message: format!("this token lacks scope {need}"),
        }
        .into_response(),
        Err(crate::Denied::Missing) => OaiError::unauthorized(
            "You didn't provide an API key: send `Authorization: Bearer <token>` (the token is in $SOV_HOME/admin.token)",
            "missing_api_key",
        )
        .into_response(),
    }
}

/// Middleware for `/v1`: an error answer axum made itself (a body over the limit, a wrong
/// method) gets OpenAI's JSON shape, without echoing the input.
pub(crate) async fn oai_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if !crate::error::needs_reshaping(&res) {
        return res;
    }
    let status = res.status();
    OaiError {
        status,
        kind: if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        },
        code: Some(crate::error::error_code(status)),
        param: None,
        message: crate::error::generic_message(status),
    }
    .into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

/// The model a request names, or, when it names none (`model` left out or null, as
/// llama.cpp's and LM Studio's single-model clients send), the node's default: the model a
/// group promoted as `default`, else the only model here of the `kind` the route needs.
async fn entry_or_default(
    state: &AppState,
    model: Option<&str>,
    kind: ModelKind,
) -> Result<ModelEntry, OaiError> {
    if let Some(name) = model {
        return entry(state, name).await;
    }
    if let Ok(e) = state.node.model(sov_node::gov::DEFAULT_NAME).await
        && e.manifest.kind == kind
    {
        return Ok(e);
    }
    let all = state
        .node
        .models()
        .await
        .map_err(|e| OaiError::server(e.to_string()))?;
    let mut of_kind: Vec<ModelEntry> = all
        .into_iter()
        .filter(|e| e.manifest.kind == kind)
        .collect();
    match of_kind.len() {
        1 => Ok(of_kind.remove(0)),
        0 => Err(OaiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: Some("model"),
            message: format!("there is no {} model here", kind.as_str()),
        }),
        _ => Err(OaiError::invalid(
            format!(
                "name a model: there are {} {} models here ({})",
                of_kind.len(),
                kind.as_str(),
                of_kind
                    .iter()
                    .map(|e| e.manifest.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some("model"),
        )),
    }
}

async fn entry(state: &AppState, model: &str) -> Result<ModelEntry, OaiError> {
    state.node.model(model).await.map_err(|e| OaiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: Some("model_not_found"),
        param: Some("model"),
        message: e.to_string(),
    })
}

fn model_json(e: &ModelEntry) -> Value {
    json!({
        "id": e.manifest.name,
        "object": "model",
        "created": e.manifest.created,
        "owned_by": e.signer.to_string(),
        "sov": {
            "manifest": e.id.to_string(),
            "kind": e.manifest.kind.as_str(),
            "architecture": e.manifest.architecture,
            "parameters": e.manifest.parameters,
            "context_length": e.manifest.context_length,
            "quantization": e.manifest.quantization,
        },
    })
}

pub(crate) async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, OaiError> {
    let all = state
        .node
        .models()
        .await
        .map_err(|e| OaiError::server(e.to_string()))?;
    let mut data: Vec<Value> = all.iter().map(model_json).collect();
    // Names a group promoted a model under (its own, and `default`): the same model, listed
    // under the name clients ask for.
    let served = state
        .node
        .gov_served_all()
        .await
        .map_err(|e| OaiError::server(e.to_string()))?;
    for (name, s) in served {
        if let Some(e) = all.iter().find(|e| e.id == s.model) {
            let mut v = model_json(e);
            v["id"] = json!(name);
            v["sov"]["promoted_by"] = json!(s.group.to_string());
            v["sov"]["proposal"] = json!(s.proposal.to_string());
            v["sov"]["model_name"] = json!(e.manifest.name);
            data.push(v);
        }
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
    })))
}

pub(crate) async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OaiError> {
    let e = entry(&state, &id).await?;
    let mut v = model_json(&e);
    if let Ok(Some(s)) = state.node.gov_served(&id).await {
        v["id"] = json!(id);
        v["sov"]["promoted_by"] = json!(s.group.to_string());
        v["sov"]["proposal"] = json!(s.proposal.to_string());
        v["sov"]["model_name"] = json!(e.manifest.name);
    }
    Ok(Json(v))
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, OaiError> {
    serde_json::from_slice(body).map_err(|e| {
        OaiError::invalid(
            format!(
                "the request body is not valid: {}",
                crate::error::json_error(&e)
            ),
            None,
        )
    })
}

/// One string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A completion prompt: text, or token ids (OpenAI takes both, and batches of either).
#[derive(Debug)]
enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for PromptInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Texts(Vec<String>),
            Tokens(Vec<u32>),
            TokenBatches(Vec<Vec<u32>>),
        }
        Raw::deserialize(d)
            .map(|r| match r {
                Raw::Text(t) => Self::Text(t),
                Raw::Texts(t) => Self::Texts(t),
                Raw::Tokens(t) => Self::Tokens(t),
                Raw::TokenBatches(t) => Self::TokenBatches(t),
            })
            .map_err(|_| {
                serde::de::Error::custom(
                    "prompt must be a string, an array of strings, an array of token ids or an array of arrays of token ids",
                )
            })
    }
}

/// Message content: a string, or parts of which the text ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
    /// An assistant's earlier calls.
    #[serde(default)]
    tool_calls: Option<Value>,
    /// A tool message: the call it answers.
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Most choices one request may ask for (`n`): each is a generation of its own.
const MAX_CHOICES: u64 = 8;

/// The sampling and length settings both completion routes share.
#[derive(Debug, Deserialize)]
struct Settings {
    /// Left out or null: the node's default (see [`entry_or_default`]).
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u64>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    seed: Option<serde_json::Number>,
    stop: Option<OneOrMany>,
    n: Option<u64>,
    #[serde(default)]
    logprobs: Option<Value>,
    top_logprobs: Option<u64>,
    #[serde(default)]
    response_format: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(flatten)]
    settings: Settings,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(flatten)]
    settings: Settings,
    prompt: PromptInput,
}

impl Settings {
    /// Log-probabilities asked for: chat says `logprobs: true` and `top_logprobs: n`,
    /// completions `logprobs: n`.
    fn logprobs(&self, api: Api) -> Result<Option<usize>, OaiError> {
        let max = sov_models::generate::MAX_TOP_LOGPROBS as u64;
        let param = if api == Api::Chat {
            "top_logprobs"
        } else {
            "logprobs"
        };
        let n = match (api, &self.logprobs) {
            (_, None) | (_, Some(Value::Null)) | (Api::Chat, Some(Value::Bool(false))) => {
                if self.top_logprobs.is_some() {
                    return Err(OaiError::invalid(
                        "top_logprobs needs logprobs: true",
                        Some("top_logprobs"),
                    ));
                }
                return Ok(None);
            }
            (Api::Chat, Some(Value::Bool(true))) => self.top_logprobs.unwrap_or(0),
            (Api::Text, Some(Value::Number(n))) => n.as_u64().ok_or_else(|| {
                OaiError::invalid("logprobs must be a whole number", Some("logprobs"))
            })?,
            (Api::Chat, _) => {
                return Err(OaiError::invalid(
                    "logprobs must be true or false",
                    Some("logprobs"),
                ));
            }
            (Api::Text, _) => {
                return Err(OaiError::invalid(
                    "logprobs must be a whole number",
                    Some("logprobs"),
                ));
            }
        };
        if n > max {
            return Err(OaiError::invalid(
                format!("at most {max} alternatives per token"),
                Some(param),
            ));
        }
        Ok(Some(n as usize))
    }

    /// The grammar `response_format` asks for: none for `text`, any JSON object for
    /// `json_object`, the schema's JSON for `json_schema` (compiled; a schema that cannot be
    /// honoured is refused, never ignored).
    fn constraint(&self) -> Result<Option<Arc<Grammar>>, OaiError> {
        let bad = |m: String| OaiError::invalid(m, Some("response_format"));
        let Some(f) = &self.response_format else {
            return Ok(None);
        };
        if f.is_null() {
            return Ok(None);
        }
        let kind = f.get("type").and_then(Value::as_str).ok_or_else(|| {
            bad("response_format needs a type: text, json_object or json_schema".into())
        })?;
        let g = match kind {
            "text" => return Ok(None),
            // llama.cpp's extension: a schema beside json_object.
            "json_object" => match f.get("schema") {
                Some(s) => Grammar::from_schema(s).map_err(|e| bad(e.to_string()))?,
                None => Grammar::json_object(),
            },
            "json_schema" => {
                let js = f
                    .get("json_schema")
                    .ok_or_else(|| bad("json_schema needs {\"name\", \"schema\"}".into()))?;
                let name = js.get("name").and_then(Value::as_str).unwrap_or_default();
                if !tools::is_plain_name(name) {
                    return Err(bad(
                        "json_schema.name is 1 to 64 letters, digits, _ or -".into()
                    ));
                }
                let schema = js
                    .get("schema")
                    .ok_or_else(|| bad("json_schema.schema is missing".into()))?;
                Grammar::from_schema(schema).map_err(|e| bad(e.to_string()))?
            }
            other => {
                return Err(bad(format!(
                    "response_format type {}: text, json_object or json_schema",
                    sov_core::quote(other)
                )));
            }
        };
        Ok(Some(Arc::new(g)))
    }

    /// How many choices are asked for (`n`, 1 to [`MAX_CHOICES`]).
    fn choices(&self) -> Result<usize, OaiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_CHOICES => Ok(n as usize),
            _ => Err(OaiError::invalid(
                format!("n must be 1 to {MAX_CHOICES}"),
                Some("n"),
            )),
        }
    }

    fn job_parts(&self) -> Result<(Option<usize>, SamplingParams, Vec<String>), OaiError> {
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.map_or(d.top_k, |k| k as usize),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            penalty_last_n: d.penalty_last_n,
            seed: match &self.seed {
                None => rand::random(),
                Some(n) => n
                    .as_u64()
                    .or_else(|| n.as_i64().map(|i| i as u64))
                    .ok_or_else(|| OaiError::invalid("seed must be an integer", Some("seed")))?,
            },
        };
        sampling.check().map_err(|m| OaiError::invalid(m, None))?;
        if let Some(f) = [self.frequency_penalty, self.presence_penalty]
            .into_iter()
            .flatten()
            .find(|f| !(-2.0..=2.0).contains(f))
        {
            return Err(OaiError::invalid(
                format!("penalties must be within [-2, 2]; got {f}"),
                Some("frequency_penalty"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(OaiError::invalid("at most 4 stop sequences", Some("stop")));
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        if max == Some(0) {
            return Err(OaiError::invalid(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ));
        }
        Ok((max.map(|m| m as usize), sampling, stop))
    }
}

fn messages(msgs: Vec<ChatMessage>) -> Result<Vec<Message>, OaiError> {
    if msgs.is_empty() {
        return Err(OaiError::invalid(
            "messages must hold at least one message",
            Some("messages"),
        ));
    }
    msgs.into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "developer" => "system".to_string(),
                "system" | "user" | "assistant" | "tool" => m.role,
                other => {
                    return Err(OaiError::invalid(
                        format!("unknown role {}", sov_core::quote(other)),
                        Some("messages"),
                    ));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                // Text parts are joined by a line break, as llama.cpp joins them: glued
                // together, "What is" and "the best book" would read "What isthe best book".
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => {
                                if !s.is_empty() {
                                    s.push('\n');
                                }
                                s.push_str(&t);
                            }
                            (kind, _) => {
                                return Err(OaiError::invalid(
                                    format!(
                                        "content parts of type {} are not supported (text is)",
                                        sov_core::quote(kind)
                                    ),
                                    Some("messages"),
                                ));
                            }
                        }
                    }
                    s
                }
            };
            let tool_calls = match m.tool_calls {
                None | Some(Value::Null) => None,
                Some(calls) if role == "assistant" => Some(tool_calls(calls)?),
                Some(_) => {
                    return Err(OaiError::invalid(
                        "only an assistant's message has tool_calls",
                        Some("messages"),
                    ));
                }
            };
            Ok(Message {
                role,
                content,
                tool_calls,
                tool_call_id: m.tool_call_id,
            })
        })
        .collect()
}

/// An assistant's earlier calls, checked: `[{"id", "type": "function", "function": {"name",
/// "arguments"}}]`, at most 64.
fn tool_calls(calls: Value) -> Result<Value, OaiError> {
    let bad = || {
        OaiError::invalid(
            "tool_calls is a list of {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}",
            Some("messages"),
        )
    };
    let list = calls.as_array().ok_or_else(bad)?;
    if list.len() > 64 {
        return Err(bad());
    }
    for c in list {
        let f = c.get("function").ok_or_else(bad)?;
        let named = f
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(tools::is_plain_name);
        let args = matches!(
            f.get("arguments"),
            Some(Value::String(_) | Value::Object(_))
        );
        if !named || !args {
            return Err(bad());
        }
    }
    Ok(calls)
}

/// A chat choice's message and finish reason. With tools, the answer is read back: calls
/// become `tool_calls` (finish `tool_calls`, or `length` if the answer ran out of tokens
/// after them, as llama.cpp says), with the words before them as the content; words alone,
/// or an answer cut short, stay as they are.
fn chat_message(o: &Output, with_tools: bool) -> (Value, &'static str) {
    if with_tools {
        let answer = tools::read(&o.text);
        if !answer.calls.is_empty() {
            let calls: Vec<Value> = answer
                .calls
                .iter()
                .map(|c| {
                    json!({
                        "id": format!("call_{:024x}", rand::random::<u128>() >> 32),
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments}
                    })
                })
                .collect();
            let finish = match o.finish {
                sov_models::generate::Finish::Length => "length",
                _ => "tool_calls",
            };
            return (
                json!({"role": "assistant", "content": answer.content, "refusal": null,
                       "tool_calls": calls}),
                finish,
            );
        }
        if let Some(words) = answer.content {
            return (
                json!({"role": "assistant", "content": words, "refusal": null}),
                o.finish.as_str(),
            );
        }
    }
    // `refusal` is required, and null: this gateway never refuses in words (OpenAI's
    // document, `ChatCompletionResponseMessage`).
    (
        json!({"role": "assistant", "content": o.text, "refusal": null}),
        o.finish.as_str(),
    )
}

/// Usage of `n` choices of one prompt: the prompt counted once, every choice's tokens; of
/// the prompt, the tokens the first choice took from the prompt cache (`cached_tokens`).
fn usage_of(outs: &[Output]) -> Value {
    let prompt = outs.first().map_or(0, |o| o.prompt_tokens);
    let cached = outs.first().map_or(0, |o| o.cached_tokens);
    let completion: usize = outs.iter().map(|o| o.completion_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Which of the two completion APIs is answering.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Text,
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    scope: Option<Extension<crate::CacheScope>>,
    body: Bytes,
) -> Result<Response, OaiError> {
    let req: ChatRequest = parse(&body)?;
    let tools = tools::Tools::parse(req.tools.as_ref(), req.tool_choice.as_ref())
        .map_err(|e| OaiError::invalid(e.message, Some(e.param)))?
        .map(|t| Arc::new(t.with_parallel(req.parallel_tool_calls.unwrap_or(true))));
    let msgs = messages(req.messages)?;
    if tools.is_some()
        && req
            .settings
            .response_format
            .as_ref()
            .is_some_and(|f| f.get("type").and_then(Value::as_str) != Some("text"))
    {
        return Err(OaiError::invalid(
            "tools and a JSON response_format cannot be asked for together",
            Some("response_format"),
        ));
    }
    let scope = cache_scope(scope);
    complete(
        state,
        req.settings,
        Prompt::Chat(msgs),
        Api::Chat,
        tools,
        scope,
    )
    .await
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    scope: Option<Extension<crate::CacheScope>>,
    body: Bytes,
) -> Result<Response, OaiError> {
    let req: CompletionRequest = parse(&body)?;
    let prompt = match req.prompt {
        PromptInput::Text(p) => Prompt::Text(p),
        PromptInput::Texts(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
        PromptInput::Tokens(ids) => Prompt::Tokens(ids),
        PromptInput::TokenBatches(mut v) if v.len() == 1 => Prompt::Tokens(v.remove(0)),
        _ => {
            return Err(OaiError::invalid(
                "one prompt per request is supported",
                Some("prompt"),
            ));
        }
    };
    if matches!(&prompt, Prompt::Tokens(ids) if ids.is_empty()) {
        return Err(OaiError::invalid(
            "a prompt of token ids needs at least one id",
            Some("prompt"),
        ));
    }
    let scope = cache_scope(scope);
    complete(state, req.settings, prompt, Api::Text, None, scope).await
}

/// The caller's prompt-cache scope; a request that came by no token check shares with no one.
fn cache_scope(scope: Option<Extension<crate::CacheScope>>) -> String {
    scope.map_or_else(|| new_id("unshared"), |Extension(s)| s.0)
}

async fn complete(
    state: AppState,
    settings: Settings,
    prompt: Prompt,
    api: Api,
    tools: Option<Arc<tools::Tools>>,
    cache_scope: String,
) -> Result<Response, OaiError> {
    let (max_tokens, sampling, stop) = settings.job_parts()?;
    let logprobs = settings.logprobs(api)?;
    let entry = entry_or_default(&state, settings.model.as_deref(), ModelKind::Language).await?;
    if entry.manifest.kind != ModelKind::Language {
        return Err(OaiError::invalid(
            format!(
                "{} is an {} model; it does not generate text",
                entry.manifest.name,
                entry.manifest.kind.as_str()
            ),
            Some("model"),
        ));
    }
    let n = settings.choices()?;
    // With tools, the node holds the answer to a call in the model's own way.
    let constraint = match &tools {
        Some(_) => None,
        None => settings.constraint()?,
    };
    // Each choice is a generation of its own, seeded apart; their events are merged,
    // tagged with the choice's index. A client that goes drops the merged receiver, the
    // forwarders stop, and so does every generation.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Event)>(sov_node::serve::EVENTS);
    for i in 0..n {
        let mut s = sampling.clone();
        s.seed = sampling.seed.wrapping_add(i as u64);
        let mut one = state
            .node
            .generate(
                &entry,
                Generation {
                    prompt: prompt.clone(),
                    max_tokens,
                    sampling: s,
                    stop: stop.clone(),
                    logprobs,
                    constraint: constraint.clone(),
                    tools: tools.clone(),
                    cache_scope: cache_scope.clone(),
                },
            )
            .await
            .map_err(OaiError::from_failure)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = one.recv().await {
                if tx.send((i, ev)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let id = new_id(if api == Api::Chat { "chatcmpl" } else { "cmpl" });
    let created = now();
    let model = entry.manifest.name.clone();
    if !settings.stream || tools.is_some() {
        let mut outs: Vec<Option<Output>> = vec![None; n];
        while let Some((i, ev)) = rx.recv().await {
            match ev {
                Event::Text(_) | Event::Logprobs(_) => {}
                Event::Done(Err(f)) => return Err(OaiError::from_failure(f)),
                Event::Done(Ok(o)) => outs[i] = Some(o),
            }
            if outs.iter().all(Option::is_some) {
                break;
            }
        }
        let outs: Vec<Output> = outs.into_iter().flatten().collect();
        if outs.len() != n {
            return Err(OaiError::server("the model's worker stopped"));
        }
        if settings.stream {
            // Tool calls are read from the whole answer: streamed, each choice comes as
            // its role, its call (or words) and its finish, once generated.
            let include_usage = settings.stream_options.is_some_and(|o| o.include_usage);
            let mut chunks = Vec::new();
            let base = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                              "model": model, "system_fingerprint": fingerprint()});
            let chunk = |choices: Value| {
                let mut v = base.clone();
                v["choices"] = choices;
                Ok::<_, Infallible>(SseEvent::default().data(v.to_string()))
            };
            for (i, o) in outs.iter().enumerate() {
                let (message, finish) = chat_message(o, tools.is_some());
                let mut delta = message;
                if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for (k, c) in calls.iter_mut().enumerate() {
                        c["index"] = json!(k);
                    }
                }
                let role = json!({"role": "assistant", "content": null});
                chunks.push(chunk(
                    json!([{"index": i, "delta": role, "logprobs": null, "finish_reason": null}]),
                ));
                if let Some(d) = delta.as_object_mut() {
                    d.remove("role");
                    d.remove("refusal");
                    if d.get("content").is_some_and(Value::is_null) {
                        d.remove("content");
                    }
                }
                chunks.push(chunk(
                    json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": null}]),
                ));
                chunks.push(chunk(
                    json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish}]),
                ));
            }
            if include_usage {
                let mut v = base.clone();
                v["choices"] = json!([]);
                v["usage"] = usage_of(&outs);
                chunks.push(Ok(SseEvent::default().data(v.to_string())));
            }
            chunks.push(Ok(SseEvent::default().data("[DONE]")));
            return Ok(Sse::new(futures::stream::iter(chunks)).into_response());
        }
        let choices: Vec<Value> = outs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let lp = logprobs.map(|_| logprobs_json(api, o));
                match api {
                    Api::Chat => {
                        let (message, finish) = chat_message(o, tools.is_some());
                        json!({
                            "index": i, "message": message, "logprobs": lp, "finish_reason": finish,
                        })
                    }
                    Api::Text => json!({
                        "index": i, "text": o.text, "logprobs": lp,
                        "finish_reason": o.finish.as_str(),
                    }),
                }
            })
            .collect();
        let object = if api == Api::Chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        return Ok(Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
            "usage": usage_of(&outs),
            "timings": timings(&outs[0]),
        }))
        .into_response());
    }
    // Streaming: wait for the first event, so a request the model refuses gets a plain
    // error answer rather than a stream that fails.
    let first = rx.recv().await;
    if let Some((_, Event::Done(Err(f)))) = first {
        return Err(OaiError::from_failure(f));
    }
    let include_usage = settings.stream_options.is_some_and(|o| o.include_usage);
    let object = if api == Api::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    // A chunk: its choices, and extra fields (usage, timings).
    let chunk = move |choices: Value, extra: Value| -> SseEvent {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model,
                           "system_fingerprint": fingerprint(), "choices": choices});
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        SseEvent::default().data(v.to_string())
    };
    let stream = events(first, rx, n, api, include_usage, logprobs.is_some(), chunk);
    Ok(Sse::new(stream).into_response())
}

/// Log-probabilities in the shape each API uses: chat `{content: [{token, logprob, bytes,
/// top_logprobs}]}`, completions `{tokens, token_logprobs, top_logprobs, text_offset}`.
fn logprobs_json(api: Api, o: &Output) -> Value {
    logprobs_of(api, &o.logprobs, 0)
}

/// Log-probabilities of `tokens`, the first of which starts at byte `start` of the text.
fn logprobs_of(api: Api, tokens: &[sov_models::generate::TokenLogprob], start: usize) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match api {
        Api::Chat => json!({"content": tokens.iter().map(|t| json!({
            "token": text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes,
            "top_logprobs": t.top.iter().map(|(_, b, lp)| json!({
                "token": text(b), "logprob": lp, "bytes": b})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(), "refusal": null}),
        Api::Text => {
            let mut offset = start;
            let mut offsets = Vec::new();
            for t in tokens {
                offsets.push(offset);
                offset += text(&t.bytes).len();
            }
            json!({
                "tokens": tokens.iter().map(|t| text(&t.bytes)).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": tokens.iter().map(|t| t.top.iter()
                    .map(|(_, b, lp)| (text(b), json!(lp)))
                    .collect::<serde_json::Map<String, Value>>()).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }
}

fn fingerprint() -> String {
    format!("sov-{}", env!("CARGO_PKG_VERSION"))
}

fn timings(o: &Output) -> Value {
    json!({
        "prompt_tokens_per_s": o.prompt_tokens_per_s(),
        "decode_tokens_per_s": o.decode_tokens_per_s(),
    })
}

/// One streamed choice (number `index`): a chat delta or a piece of completion text.
fn stream_choice(api: Api, index: usize, delta: Value, finish: Option<&str>) -> Value {
    match api {
        Api::Chat => {
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}])
        }
        Api::Text => json!([{"index": index,
            "text": delta.get("content").cloned().unwrap_or(json!("")),
            "logprobs": null, "finish_reason": finish}]),
    }
}

/// The SSE events of `n` streamed choices of one prompt: a role chunk per choice (chat), text
/// chunks tagged with their choice, each choice's finish chunk, an optional usage chunk once
/// all are done, `[DONE]`.
fn events(
    first: Option<(usize, Event)>,
    rx: tokio::sync::mpsc::Receiver<(usize, Event)>,
    n: usize,
    api: Api,
    include_usage: bool,
    want_logprobs: bool,
    chunk: impl Fn(Value, Value) -> SseEvent + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    enum St {
        Start(Option<(usize, Event)>),
        Running,
        Finished,
    }
    let done: Vec<Option<Output>> = vec![None; n];
    // Per choice: the log-probabilities of the next piece of text, whether any were sent
    // with a piece, and the bytes of text sent so far (completions' offsets).
    let progress: Vec<(Vec<sov_models::generate::TokenLogprob>, bool, usize)> =
        vec![(Vec::new(), false, 0); n];
    let state = (St::Start(first), rx, chunk, done, progress);
    futures::stream::unfold(
        state,
        move |(st, mut rx, chunk, mut done, mut progress)| async move {
            let mut out: Vec<SseEvent> = Vec::new();
            let mut next = match st {
                St::Finished => return None,
                St::Start(first) => {
                    if api == Api::Chat {
                        for i in 0..n {
                            // No content yet: null, as llama.cpp sends it (a client may
                            // take an empty string for a piece of text).
                            let role = json!({"role": "assistant", "content": null});
                            out.push(chunk(stream_choice(api, i, role, None), json!({})));
                        }
                    }
                    first
                }
                St::Running => rx.recv().await,
            };
            let mut finished = false;
            // Take what is ready now, so a fast model sends fewer, larger writes.
            loop {
                match next {
                    Some((i, Event::Logprobs(lp))) => {
                        if let Some(p) = progress.get_mut(i) {
                            p.0 = lp;
                        }
                    }
                    // No empty pieces (their log-probabilities go with the next one).
                    Some((_, Event::Text(t))) if t.is_empty() => {}
                    Some((i, Event::Text(t))) => {
                        let mut piece = stream_choice(api, i, json!({"content": t}), None);
                        if let Some(p) = progress.get_mut(i) {
                            // Each chunk carries the log-probabilities of the tokens it holds.
                            if want_logprobs
                                && !p.0.is_empty()
                                && let Some(c) = piece.get_mut(0)
                            {
                                c["logprobs"] = logprobs_of(api, &p.0, p.2);
                                p.1 = true;
                            }
                            p.0.clear();
                            p.2 += t.len();
                        }
                        out.push(chunk(piece, json!({})));
                    }
                    Some((i, Event::Done(Ok(o)))) => {
                        let finish = o.finish.as_str();
                        // Like llama.cpp's server, a choice's last chunk carries the speed
                        // figures; log-probabilities, if asked for, come whole with it.
                        let mut choices = stream_choice(api, i, json!({}), Some(finish));
                        // Sent piece by piece already; whole here only if no piece had any.
                        let sent = progress.get(i).is_some_and(|p| p.1);
                        if want_logprobs
                            && !sent
                            && let Some(c) = choices.get_mut(0)
                        {
                            c["logprobs"] = logprobs_json(api, &o);
                        }
                        out.push(chunk(choices, json!({"timings": timings(&o)})));
                        if let Some(d) = done.get_mut(i) {
                            *d = Some(o);
                        }
                        if done.iter().all(Option::is_some) {
                            if include_usage {
                                let outs: Vec<Output> = done.iter().flatten().cloned().collect();
                                out.push(chunk(json!([]), json!({"usage": usage_of(&outs)})));
                            }
                            out.push(SseEvent::default().data("[DONE]"));
                            finished = true;
                            break;
                        }
                    }
                    Some((_, Event::Done(Err(f)))) => {
                        let msg = f.to_string();
                        let err = json!({"error": {
                            "message": msg, "type": "server_error", "param": null, "code": null
                        }});
                        out.push(SseEvent::default().data(err.to_string()));
                        out.push(SseEvent::default().data("[DONE]"));
                        finished = true;
                        break;
                    }
                    None => {
                        finished = true;
                        break;
                    }
                }
                next = rx.try_recv().ok();
                if next.is_none() {
                    break;
                }
            }
            let st = if finished { St::Finished } else { St::Running };
            Some((
                futures::stream::iter(out.into_iter().map(Ok)),
                (st, rx, chunk, done, progress),
            ))
        },
    )
    .flatten()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    #[serde(default)]
    model: Option<String>,
    input: EmbeddingInput,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
}

/// Most inputs in one embeddings request (OpenAI's limit is 2,048).
const MAX_EMBED_INPUTS: usize = 2048;

pub(crate) async fn embeddings(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, OaiError> {
    let req: EmbeddingRequest = parse(&body)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OaiError::invalid(
                format!(
                    "encoding_format {}: float or base64",
                    sov_core::quote(other)
                ),
                Some("encoding_format"),
            ));
        }
    };
    let inputs: Vec<EmbedInput> = match req.input {
        EmbeddingInput::One(s) => vec![EmbedInput::Text(s)],
        EmbeddingInput::Many(v) => v.into_iter().map(EmbedInput::Text).collect(),
        EmbeddingInput::Tokens(t) => vec![EmbedInput::Tokens(t)],
        EmbeddingInput::ManyTokens(v) => v.into_iter().map(EmbedInput::Tokens).collect(),
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
        return Err(OaiError::invalid(
            format!("input must hold 1 to {MAX_EMBED_INPUTS} items"),
            Some("input"),
        ));
    }
    let entry = entry_or_default(&state, req.model.as_deref(), ModelKind::Embedding).await?;
    if entry.manifest.kind != ModelKind::Embedding {
        return Err(OaiError::invalid(
            format!(
                "{} is a {} model; embeddings need an embedding model",
                entry.manifest.name,
                entry.manifest.kind.as_str()
            ),
            Some("model"),
        ));
    }
    if let Some(d) = req.dimensions
        && d != entry.manifest.dimensions
    {
        return Err(OaiError::invalid(
            format!(
                "{} makes {}-dimensional embeddings; dimensions {d} is not available",
                entry.manifest.name, entry.manifest.dimensions
            ),
            Some("dimensions"),
        ));
    }
    let out = state
        .node
        .embed(&entry, inputs)
        .await
        .map_err(OaiError::from_failure)?;
    let tokens: usize = out.iter().map(|(_, n)| n).sum();
    let data: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(i, (e, _))| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": entry.manifest.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
