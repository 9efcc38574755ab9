//! `sov model …`, `sov run` and `sov chat`. While a node runs, they go through its API (the
//! registry routes and the `/v1` gateway: the node holds the store, and the model stays
//! loaded there between runs); otherwise through an offline node here, which serves the
//! model with the same code.

use std::{
    io::{self, BufRead as _, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sov_api::{EvalRequest, ImportRequest, ModelDetail, ModelInfo, PullRequest, ShareRequest};
use sov_models::{chat::Message, generate::Output, manifest::ModelKind, sample::SamplingParams};
use sov_node::{
    Node,
    classifier::EvalReport,
    models::{ImportOptions, ModelEntry},
    serve::{Event, Generation, Prompt},
};

use crate::{
    args::{ChatArgs, ModelCommand, RunArgs, SamplingArgs},
    home::Home,
    output::{self, note, say},
    remote::Api,
    target::{Local, Target},
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Generate with `node`'s model `entry`, giving text to `on_text` as it forms: the one
/// place the CLI and the demo take a generation's events.
pub async fn generate(
    node: &Node,
    entry: &ModelEntry,
    generation: Generation,
    on_text: &mut dyn FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Output> {
    let mut events = node.generate(entry, generation).await?;
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => on_text(&t)?,
            Event::Logprobs(_) => {}
            Event::Done(result) => return Ok(result?),
        }
    }
    bail!("the model's worker stopped before the answer ended")
}

/// `sov model …`
pub fn run(home: &Home, cmd: ModelCommand) -> anyhow::Result<()> {
    let target = Target::pick(home, None)?;
    let (remote, local) = match &target {
        Target::Remote(api) => (Some(api), None),
        Target::Local(l) => (None, Some(l)),
    };
    let local = || local.context("no node is running");
    match cmd {
        ModelCommand::Import {
            path,
            name,
            license,
            chat_template,
            json,
        } => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("{} cannot be read", path.display()))?;
            let chat_template = chat_template
                .map(|t| {
                    std::fs::canonicalize(&t)
                        .with_context(|| format!("{} cannot be read", t.display()))
                })
                .transpose()?;
            note!("checking and storing {} …", path.display());
            let info = match &remote {
                Some(api) => api.post_json(
                    "/api/v1/models",
                    &ImportRequest {
                        path: path.display().to_string(),
                        name,
                        license,
                        chat_template: chat_template.map(|t| t.display().to_string()),
                    },
                )?,
                None => {
                    let l = local()?;
                    let entry = l.block_on(l.node().import_model(
                        &path,
                        ImportOptions {
                            name,
                            license,
                            parent: None,
                            created: now(),
                            chat_template,
                        },
                    ))?;
                    ModelInfo::from(&entry)
                }
            };
            if json {
                say!("{}", serde_json::to_string(&info)?)?;
            } else {
                note!(
                    "imported {} ({} {} model, {} parameters, {})",
                    info.name,
                    info.architecture,
                    info.kind,
                    count(info.parameters),
                    output::bytes(info.weights_size)
                );
                say!("{}", info.id)?;
            }
            Ok(())
        }
        ModelCommand::Ls { json, offered } => {
            let all: Vec<ModelInfo> = match &remote {
                Some(api) if offered => api.get_json("/api/v1/models/offered")?,
                None if offered => {
                    bail!("offers arrive over the network: start the node first (`sov node run`)")
                }
                Some(api) => api.get_json("/api/v1/models")?,
                None => {
                    let l = local()?;
                    l.block_on(l.node().models())?
                        .iter()
                        .map(ModelInfo::from)
                        .collect()
                }
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?)?;
                return Ok(());
            }
            if all.is_empty() && offered {
                note!("no peer has offered a model yet");
                return Ok(());
            }
            if all.is_empty() {
                note!("no models yet: `sov model import FILE.gguf` adds one");
                return Ok(());
            }
            say!(
                "{:<28} {:<10} {:<6} {:>7} {:>9} {:>6}  {}",
                "NAME",
                "KIND",
                "ARCH",
                "PARAMS",
                "SIZE",
                "CTX",
                "ID"
            )?;
            for m in &all {
                say!(
                    "{:<28} {:<10} {:<6} {:>7} {:>9} {:>6}  {}",
                    m.name,
                    m.kind,
                    m.architecture,
                    count(m.parameters),
                    output::bytes(m.weights_size),
                    m.context_length,
                    m.id
                )?;
            }
            Ok(())
        }
        ModelCommand::Rm { model } => {
            let info = match &remote {
                Some(api) => api.delete_json(&format!("/api/v1/models/{model}"))?,
                None => {
                    let l = local()?;
                    ModelInfo::from(&l.block_on(l.node().remove_model(&model))?)
                }
            };
            note!("removed {} ({})", info.name, info.id);
            Ok(())
        }
        ModelCommand::Share { model, did } => {
            let info: ModelInfo = match &remote {
                Some(api) => api.post_json(
                    &format!("/api/v1/models/{model}/share"),
                    &ShareRequest { did: did.clone() },
                )?,
                None => {
                    let l = local()?;
                    let reader = did
                        .parse()
                        .with_context(|| format!("{did:?} is not a usable did:key"))?;
                    ModelInfo::from(&l.block_on(l.node().share_model(&model, reader))?)
                }
            };
            note!(
                "{did} may now pull {}: sov model pull {}",
                info.name,
                info.id
            );
            Ok(())
        }
        ModelCommand::Show { model, json } => {
            let detail: ModelDetail = match remote {
                Some(api) => api.get_json(&format!("/api/v1/models/{model}"))?,
                None => {
                    let l = local()?;
                    let entry = l.block_on(l.node().model(&model))?;
                    let signature_valid = l.block_on(l.node().model_signature_valid(&model))?;
                    ModelDetail {
                        info: ModelInfo::from(&entry),
                        signature_valid,
                    }
                }
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&detail)?)?;
                return Ok(());
            }
            let m = &detail.info;
            say!("{}  {}", m.name, m.id)?;
            say!("kind        {} ({}, {})", m.kind, m.architecture, m.format)?;
            say!(
                "parameters  {}  weights {}",
                m.parameters,
                output::bytes(m.weights_size)
            )?;
            say!(
                "signed by   {} ({})",
                m.signer,
                if detail.signature_valid {
                    "signature valid"
                } else {
                    "SIGNATURE INVALID"
                }
            )?;
            if let Some(p) = &m.parent {
                say!("parent      {p}")?;
            }
            if let Some(t) = &m.chat_template {
                say!("template    {t} (instead of the file's own)")?;
            }
            if let Some(t) = &m.training {
                say!(
                    "trained by  federation {} round {} ({} contributors, {}{})",
                    t["federation"].as_str().unwrap_or("?"),
                    t["round"].as_u64().or(t["rounds"].as_u64()).unwrap_or(0),
                    t["contributors"],
                    t["strategy"].as_str().unwrap_or("?"),
                    if t["secure_aggregation"] == true {
                        ", secure aggregation"
                    } else {
                        ""
                    }
                )?;
                if let Some(p) = t["privacy"].as_object() {
                    say!(
                        "privacy     ε = {} δ = {}",
                        p["epsilon"].as_str().unwrap_or("?"),
                        p["delta"].as_str().unwrap_or("?")
                    )?;
                }
                for c in t["transcript"].as_array().into_iter().flatten() {
                    say!(
                        "  included  {} sent {}",
                        c["member"].as_str().unwrap_or("?"),
                        &c["digest"].as_str().unwrap_or("?")[..16]
                    )?;
                }
            }
            for e in &m.evaluation {
                say!(
                    "evaluation  {} {} on {}",
                    e["metric"].as_str().unwrap_or("?"),
                    e["value"].as_str().unwrap_or("?"),
                    e["dataset"].as_str().unwrap_or("?")
                )?;
            }
            Ok(())
        }
        ModelCommand::Eval {
            model,
            data,
            label_column,
            standardize,
            json,
        } => {
            let data = if std::path::Path::new(&data).is_file() {
                std::fs::canonicalize(&data)
                    .with_context(|| format!("reading {data}"))?
                    .to_string_lossy()
                    .into_owned()
            } else {
                data
            };
            let report: EvalReport = match remote {
                Some(api) => api.post_json(
                    &format!("/api/v1/models/{model}/eval"),
                    &EvalRequest {
                        data,
                        label_column,
                        standardize,
                    },
                )?,
                None => {
                    let l = local()?;
                    l.block_on(
                        l.node()
                            .evaluate_model(&model, &data, label_column, standardize),
                    )?
                }
            };
            if json {
                say!("{}", serde_json::to_string(&report)?)?;
            } else {
                say!(
                    "accuracy {:.2} %  loss {:.4}  on {} rows",
                    report.accuracy * 100.0,
                    report.loss,
                    report.rows
                )?;
            }
            Ok(())
        }
        ModelCommand::Pull { id, json } => {
            let Some(api) = remote else {
                bail!("pulling needs the network: start the node first (`sov node run`)");
            };
            note!("pulling {id} …");
            let info: ModelInfo = api.post_json("/api/v1/models/pull", &PullRequest { id })?;
            if json {
                say!("{}", serde_json::to_string(&info)?)?;
            } else {
                note!(
                    "pulled {} ({} model, {}), signed by {}",
                    info.name,
                    info.kind,
                    output::bytes(info.weights_size),
                    info.signer
                );
                say!("{}", info.id)?;
            }
            Ok(())
        }
    }
}

/// `135M`, `1.2B`.
fn count(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{:.0}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.0}M", n as f64 / 1e6),
        _ => format!("{:.1}B", n as f64 / 1e9),
    }
}

fn sampling(a: &SamplingArgs) -> SamplingParams {
    SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed.unwrap_or_else(rand::random),
        ..SamplingParams::default()
    }
}

/// What one answer cost (the last line of `sov run --json`, fields in this order).
#[derive(serde::Serialize)]
struct Summary {
    text: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_per_s: f64,
    decode_tokens_per_s: f64,
}

/// Where generation happens: here, or in the running node.
enum Engine {
    Local {
        local: Local,
        entry: Box<ModelEntry>,
    },
    Remote {
        api: Api,
        model: String,
    },
}

impl Engine {
    fn open(home: &Home, model: &str, threads: Option<usize>) -> anyhow::Result<Self> {
        match Target::pick(home, threads)? {
            Target::Remote(api) => {
                if threads.is_some() {
                    note!("a node is running: it serves the model with its own --threads");
                }
                Ok(Engine::Remote {
                    api,
                    model: model.to_string(),
                })
            }
            Target::Local(local) => {
                let entry = local.block_on(local.node().model(model))?;
                if entry.manifest.kind != ModelKind::Language {
                    bail!(
                        "{} is an {} model; `sov run` and `sov chat` need a language model",
                        entry.manifest.name,
                        entry.manifest.kind.as_str()
                    );
                }
                Ok(Engine::Local {
                    local,
                    entry: Box::new(entry),
                })
            }
        }
    }

    /// Generate an answer, giving text to `on_text` as it forms.
    fn answer(
        &self,
        messages: Option<&[Message]>,
        raw: Option<&str>,
        a: &SamplingArgs,
        on_text: &mut dyn FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Summary> {
        let params = sampling(a);
        match self {
            Engine::Local { local, entry } => {
                let prompt = match (messages, raw) {
                    (Some(msgs), _) => Prompt::Chat(msgs.to_vec()),
                    (None, Some(t)) => Prompt::Text(t.to_string()),
                    (None, None) => bail!("nothing to answer"),
                };
                let generation = Generation {
                    prompt,
                    max_tokens: Some(a.max_tokens),
                    sampling: params,
                    stop: Vec::new(),
                    logprobs: None,
                    constraint: None,
                    tools: None,
                    cache_scope: String::new(),
                };
                let out = local.block_on(generate(local.node(), entry, generation, on_text))?;
                Ok(Summary {
                    prompt_tokens_per_s: out.prompt_tokens_per_s(),
                    decode_tokens_per_s: out.decode_tokens_per_s(),
                    text: out.text,
                    prompt_tokens: out.prompt_tokens as u64,
                    completion_tokens: out.completion_tokens as u64,
                })
            }
            Engine::Remote { api, model } => {
                let mut body = json!({
                    "model": model,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                    "max_tokens": a.max_tokens,
                    "temperature": params.temperature,
                    "top_k": params.top_k,
                    "top_p": params.top_p,
                    "min_p": params.min_p,
                    "repeat_penalty": params.repeat_penalty,
                    "seed": params.seed,
                });
                let path = match (messages, raw) {
                    (Some(msgs), _) => {
                        body["messages"] = serde_json::to_value(msgs)?;
                        "/v1/chat/completions"
                    }
                    (None, Some(t)) => {
                        body["prompt"] = json!(t);
                        "/v1/completions"
                    }
                    (None, None) => bail!("nothing to answer"),
                };
                let mut text = String::new();
                let mut usage = Value::Null;
                let mut timings = Value::Null;
                api.stream_sse(path, &body, &mut |chunk: Value| {
                    let choice = &chunk["choices"][0];
                    let piece = choice["delta"]["content"]
                        .as_str()
                        .or_else(|| choice["text"].as_str())
                        .unwrap_or("");
                    if !piece.is_empty() {
                        text.push_str(piece);
                        on_text(piece)?;
                    }
                    if !chunk["usage"].is_null() {
                        usage = chunk["usage"].clone();
                    }
                    if !chunk["timings"].is_null() {
                        timings = chunk["timings"].clone();
                    }
                    Ok(())
                })?;
                Ok(Summary {
                    text,
                    prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
                    completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
                    prompt_tokens_per_s: timings["prompt_tokens_per_s"].as_f64().unwrap_or(0.0),
                    decode_tokens_per_s: timings["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
                })
            }
        }
    }
}

fn conversation(system: Option<&str>) -> Vec<Message> {
    system
        .map(|s| vec![Message::new("system", s)])
        .unwrap_or_default()
}

/// `sov run`
pub fn run_prompt(home: &Home, args: RunArgs) -> anyhow::Result<()> {
    let engine = Engine::open(home, &args.model, args.threads)?;
    let mut messages = conversation(args.sampling.system.as_deref());
    messages.push(Message::new("user", &args.prompt));
    let (msgs, raw) = if args.raw {
        (None, Some(args.prompt.as_str()))
    } else {
        (Some(messages.as_slice()), None)
    };
    let json = args.json;
    let mut stdout = io::stdout();
    let s = engine.answer(msgs, raw, &args.sampling, &mut |t| {
        if !json {
            stdout.write_all(t.as_bytes())?;
            stdout.flush()?;
        }
        Ok(())
    })?;
    if json {
        say!("{}", serde_json::to_string(&s)?)?;
    } else {
        say!()?;
        note!(
            "[{} prompt tokens at {:.1}/s, {} generated at {:.1}/s]",
            s.prompt_tokens,
            s.prompt_tokens_per_s,
            s.completion_tokens,
            s.decode_tokens_per_s
        );
    }
    Ok(())
}

/// `sov chat`
pub fn chat(home: &Home, args: ChatArgs) -> anyhow::Result<()> {
    let engine = Engine::open(home, &args.model, args.threads)?;
    let mut messages = conversation(args.sampling.system.as_deref());
    note!(
        "chatting with {} (/reset starts over, /exit or Ctrl-D quits)",
        args.model
    );
    let stdin = io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        let _ = io::stderr().flush();
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages = conversation(args.sampling.system.as_deref());
                note!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", input));
        let mut stdout = io::stdout();
        let answer = engine.answer(Some(&messages), None, &args.sampling, &mut |t| {
            stdout.write_all(t.as_bytes())?;
            stdout.flush()?;
            Ok(())
        });
        match answer {
            Ok(s) => {
                say!()?;
                messages.push(Message::new("assistant", &s.text));
            }
            Err(e) => {
                messages.pop();
                note!("\nerror: {e:#}");
            }
        }
    }
}
