//! Tool calls (OpenAI's `tools`, `tool_choice`, `role: tool` messages), in two ways:
//!
//! - **The template's own syntax**, where the chat template has one ([`ToolSyntax`]; Qwen
//!   2.5, Hermes and the templates that follow them): the tool list goes to the template as
//!   `tools`, earlier calls and results as the messages' `tool_calls` and `role: tool`, and
//!   constrained decoding holds a call to `<tool_call>\n{"name", "arguments"}\n</tool_call>`,
//!   the arguments as the tool's `parameters` schema describes them (under `auto` an answer
//!   that does not open a call is free words).
//! - **For any other model**, the tools are described in a system message, and constrained
//!   decoding holds the answer to one JSON object, either `{"tool_call": {"name",
//!   "arguments"}}` or (unless a call is required) `{"response": "…"}` (llama.cpp's generic
//!   tool format); earlier calls and results are written into the conversation as text.
//!
//! [`read`] takes either back into calls and words.

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    chat::{Message, ToolSyntax},
    constrain::Grammar,
};

/// A request's tools that cannot be used, and the field at fault (a gateway answers 400).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// What is wrong.
    pub message: String,
    /// The request's field: `tools` or `tool_choice`.
    pub param: &'static str,
}

type OaiError = Invalid;

/// Most tools one request may declare.
const MAX_TOOLS: usize = 64;
/// How a call opens and closes in the Hermes syntax.
const HERMES_OPEN: &str = "<tool_call>\n";
const HERMES_CLOSE: &str = "\n</tool_call>";
/// Most calls read back from one answer.
const MAX_CALLS: usize = 16;

/// One declared function.
#[derive(Debug, Clone)]
struct Tool {
    name: String,
    description: String,
    parameters: Value,
}

/// Whether `name` is 1 to 64 letters, digits, `_` or `-` (OpenAI's rule for function and
/// schema names).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What the request allows the model to do.
#[derive(Debug, Clone, PartialEq)]
enum Choice {
    /// Answer in words or call a tool.
    Auto,
    /// Call some tool.
    Required,
    /// Call this one.
    Named(String),
}

/// The tools of a request, when it has some and allows them.
#[derive(Debug, Clone)]
pub struct Tools {
    list: Vec<Tool>,
    choice: Choice,
    /// Whether one answer may hold several calls (OpenAI's `parallel_tool_calls`).
    parallel: bool,
}

fn bad(m: impl Into<String>, param: &'static str) -> OaiError {
    Invalid {
        message: m.into(),
        param,
    }
}

impl Tools {
    /// Read `tools` and `tool_choice`; `None` if there are no tools or the choice is
    /// `none`.
    pub fn parse(tools: Option<&Value>, choice: Option<&Value>) -> Result<Option<Self>, OaiError> {
        let Some(tools) = tools.filter(|t| !t.is_null()) else {
            if choice.is_some_and(|c| !c.is_null() && c != "none" && c != "auto") {
                return Err(bad(
                    "tool_choice names a tool but the request declares none",
                    "tool_choice",
                ));
            }
            return Ok(None);
        };
        let arr = tools.as_array().ok_or_else(|| {
            bad(
                "tools is a list of {type: function, function: {...}}",
                "tools",
            )
        })?;
        if arr.is_empty() {
            return Ok(None);
        }
        if arr.len() > MAX_TOOLS {
            return Err(bad(format!("at most {MAX_TOOLS} tools"), "tools"));
        }
        let mut list = Vec::new();
        for t in arr {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad(
                    "each tool is {\"type\": \"function\", \"function\": {...}}",
                    "tools",
                ));
            }
            let f = t
                .get("function")
                .ok_or_else(|| bad("a tool needs its function", "tools"))?;
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            if !is_plain_name(name) {
                return Err(bad(
                    "a function's name is 1 to 64 letters, digits, _ or -",
                    "tools",
                ));
            }
            if list.iter().any(|x: &Tool| x.name == name) {
                return Err(bad(format!("two tools are named {name}"), "tools"));
            }
            let parameters = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            // A schema constrained decoding cannot hold is refused now, not at generation.
            Grammar::from_schema(&parameters)
                .map_err(|e| bad(format!("the parameters of {name}: {e}"), "tools"))?;
            list.push(Tool {
                name: name.to_owned(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(2000)
                    .collect(),
                parameters,
            });
        }
        let choice = match choice {
            None | Some(Value::Null) => Choice::Auto,
            Some(Value::String(s)) if s == "auto" => Choice::Auto,
            Some(Value::String(s)) if s == "none" => return Ok(None),
            Some(Value::String(s)) if s == "required" => Choice::Required,
            Some(c) => {
                let name = c
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(
                            "tool_choice is auto, none, required or {\"type\": \"function\", \"function\": {\"name\"}}",
                            "tool_choice",
                        )
                    })?;
                if !list.iter().any(|t| t.name == name) {
                    return Err(bad(
                        format!("tool_choice names {name}, which is not a tool"),
                        "tool_choice",
                    ));
                }
                Choice::Named(name.to_owned())
            }
        };
        Ok(Some(Tools {
            list,
            choice,
            parallel: true,
        }))
    }

    /// Allow one answer several calls, or only one (OpenAI's `parallel_tool_calls`, true
    /// unless a request says otherwise). Only a syntax that writes calls one after another
    /// (Hermes) has room for several; the others hold one.
    pub fn with_parallel(mut self, parallel: bool) -> Self {
        self.parallel = parallel;
        self
    }

    /// The tools the answer may call.
    fn allowed(&self) -> impl Iterator<Item = &Tool> {
        self.list.iter().filter(|t| match &self.choice {
            Choice::Named(n) => *n == t.name,
            _ => true,
        })
    }

    /// The grammar of the answer in `syntax` (`None`: the JSON envelope): a call of one of
    /// the allowed tools, or (under `auto`) words.
    pub fn grammar(&self, syntax: Option<ToolSyntax>) -> crate::Result<Grammar> {
        let call = |t: &Tool, name: &str, arguments: &str| {
            json!({
                "type": "object",
                "properties": {name: {"const": t.name}, arguments: t.parameters},
                "required": [name, arguments],
                "additionalProperties": false
            })
        };
        let auto = self.choice == Choice::Auto;
        match syntax {
            Some(ToolSyntax::Hermes) => {
                let alts: Vec<Value> = self
                    .allowed()
                    .map(|t| call(t, "name", "arguments"))
                    .collect();
                let g = Grammar::from_schema(&json!({ "anyOf": alts }))?.framed(
                    HERMES_OPEN,
                    HERMES_CLOSE,
                    auto,
                );
                Ok(if self.parallel { g.repeated() } else { g })
            }
            // The whole answer is the call; under `auto`, an answer that does not open with
            // `{` is words (llama.cpp's lazy grammar for Llama 3 does the same).
            Some(ToolSyntax::Llama3) => {
                let alts: Vec<Value> = self
                    .allowed()
                    .map(|t| call(t, "name", "parameters"))
                    .collect();
                Ok(Grammar::from_schema(&json!({ "anyOf": alts }))?.framed("", "", auto))
            }
            None => {
                let mut alts: Vec<Value> = self
                    .allowed()
                    .map(|t| {
                        json!({
                            "type": "object",
                            "properties": {"tool_call": call(t, "name", "arguments")},
                            "required": ["tool_call"],
                            "additionalProperties": false
                        })
                    })
                    .collect();
                if auto {
                    alts.push(json!({
                        "type": "object",
                        "properties": {"response": {"type": "string"}},
                        "required": ["response"],
                        "additionalProperties": false
                    }));
                }
                Grammar::from_schema(&json!({ "anyOf": alts }))
            }
        }
    }

    /// The tool list as a template takes it: OpenAI's `[{"type": "function", "function":
    /// {"name", "description", "parameters"}}]`, as Hugging Face's `apply_chat_template`
    /// passes it.
    pub fn for_template(&self) -> Value {
        self.list
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters
                }})
            })
            .collect()
    }

    /// The system message that tells the model its tools and how to answer.
    pub fn system_text(&self) -> String {
        let tools: Vec<Value> = self
            .list
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        let how = match &self.choice {
            Choice::Auto => "To call a tool, answer with {\"tool_call\": {\"name\": NAME, \"arguments\": {...}}}; to answer directly, with {\"response\": TEXT}.".to_owned(),
            Choice::Required => "Answer with {\"tool_call\": {\"name\": NAME, \"arguments\": {...}}}.".to_owned(),
            Choice::Named(n) => format!("Call {n}: answer with {{\"tool_call\": {{\"name\": \"{n}\", \"arguments\": {{...}}}}}}."),
        };
        format!(
            "You can use these tools:\n{}\n{how} Answer with that JSON object only.",
            serde_json::to_string_pretty(&tools).unwrap_or_default()
        )
    }
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    /// The function's name.
    pub name: String,
    /// Its arguments, as JSON text (as OpenAI gives them).
    pub arguments: String,
}

/// What the model answered, read back: words, calls, or both (words before the calls).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    /// Words (`None`: none).
    pub content: Option<String>,
    /// Calls, in order.
    pub calls: Vec<Call>,
}

/// A call written as `{"name": …, "arguments": {…}}` (or `"parameters"`, as Llama 3 writes
/// it; arguments may also come as JSON text).
fn call_of(v: &Value) -> Option<Call> {
    let name = v.get("name")?.as_str()?;
    if !is_plain_name(name) {
        return None;
    }
    let arguments = match v.get("arguments").or_else(|| v.get("parameters"))? {
        Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
        a => a.clone(),
    };
    arguments.is_object().then(|| Call {
        name: name.to_owned(),
        arguments: arguments.to_string(),
    })
}

/// Read a model's answer to a request with tools, in any of the ways it may answer: the JSON
/// envelope (`{"tool_call": …}` or `{"response": …}`), a call as the whole answer (Llama 3's
/// `{"name", "parameters"}`), or `<tool_call>…</tool_call>` blocks anywhere in words (the
/// last may be left unclosed). Anything else, an answer cut short
/// included, is words as they are.
pub fn read(text: &str) -> Answer {
    let words = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    };
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        if let Some(call) = v.get("tool_call").and_then(call_of) {
            return Answer {
                content: None,
                calls: vec![call],
            };
        }
        if let Some(Value::String(r)) = v.get("response") {
            return Answer {
                content: Some(r.clone()),
                calls: Vec::new(),
            };
        }
        if let Some(call) = call_of(&v) {
            return Answer {
                content: None,
                calls: vec![call],
            };
        }
    }
    let open = HERMES_OPEN.trim_end();
    let close = HERMES_CLOSE.trim_start();
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        let inner = &rest[at + open.len()..];
        let (body, after, closed) = match inner.find(close) {
            Some(end) => (&inner[..end], &inner[end + close.len()..], true),
            None => (inner, "", false),
        };
        match serde_json::from_str::<Value>(body.trim())
            .ok()
            .as_ref()
            .and_then(call_of)
        {
            Some(call) if calls.len() < MAX_CALLS => {
                content.push_str(&rest[..at]);
                calls.push(call);
            }
            // An unclosed block that does not parse, after whole calls, is a call cut short
            // (the answer ran out of tokens): dropped, not shown as words.
            _ if !closed && !calls.is_empty() => content.push_str(&rest[..at]),
            _ => {
                let kept = if closed {
                    rest.len() - after.len()
                } else {
                    rest.len()
                };
                content.push_str(&rest[..kept]);
            }
        }
        rest = after;
    }
    content.push_str(rest);
    if calls.is_empty() {
        return Answer {
            content: Some(text.to_owned()),
            calls,
        };
    }
    Answer {
        content: words(&content),
        calls,
    }
}

/// The messages (and tool list) a chat template gets. A template with tool syntax of its own
/// gets the messages' calls and results as they are (arguments as JSON objects, as templates
/// expect them) and the tools as its `tools`; any other gets calls written in the envelope
/// the model is asked to answer in, results as the user's turn, and the tools described in
/// the system message.
pub fn prompt_messages(
    messages: &[Message],
    tools: Option<&Tools>,
    syntax: Option<ToolSyntax>,
) -> (Vec<Message>, Option<Value>) {
    match syntax {
        Some(ToolSyntax::Hermes | ToolSyntax::Llama3) => {
            let msgs = messages
                .iter()
                .map(|m| Message {
                    tool_calls: m.tool_calls.as_ref().map(calls_for_template),
                    ..m.clone()
                })
                .collect();
            (msgs, tools.map(Tools::for_template))
        }
        None => {
            let mut msgs: Vec<Message> = messages.iter().map(plain).collect();
            if let Some(t) = tools {
                let text = t.system_text();
                match msgs.first_mut() {
                    Some(m) if m.role == "system" => m.content = format!("{}\n\n{text}", m.content),
                    _ => msgs.insert(0, Message::new("system", text)),
                }
            }
            (msgs, None)
        }
    }
}

/// A message for a template without tool syntax: a result becomes the user's turn, an
/// assistant's calls the envelope it is asked to answer in.
fn plain(m: &Message) -> Message {
    if m.role == "tool" {
        let id = m.tool_call_id.as_deref().unwrap_or("?");
        return Message::new("user", format!("Result of tool call {id}: {}", m.content));
    }
    let calls: Vec<String> = m
        .tool_calls
        .as_ref()
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(envelope).collect())
        .unwrap_or_default();
    let mut content = m.content.clone();
    for c in calls {
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(&c);
    }
    Message::new(m.role.as_str(), content)
}

/// A call's arguments, from OpenAI's JSON text to the object it holds.
fn arguments_of(f: &Value) -> Value {
    match f.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        Some(v) => v.clone(),
        None => json!({}),
    }
}

/// One earlier call as the envelope text.
fn envelope(call: &Value) -> Option<String> {
    let f = call.get("function")?;
    Some(json!({"tool_call": {"name": f.get("name")?, "arguments": arguments_of(f)}}).to_string())
}

/// Earlier calls as a template reads them: `function.arguments` an object.
fn calls_for_template(calls: &Value) -> Value {
    let Some(list) = calls.as_array() else {
        return json!([]);
    };
    list.iter()
        .filter_map(|c| {
            let f = c.get("function")?;
            Some(json!({
                "id": c.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": f.get("name")?, "arguments": arguments_of(f)}
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::{chat::ChatTemplate, constrain::Matcher};

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": false}}}])
    }

    fn allowed(g: &Grammar, text: &str) -> bool {
        let mut m = Matcher::new(Arc::new(g.clone()));
        m.advance(text.as_bytes()) && m.can_end()
    }

    fn call(name: &str, arguments: &str) -> Call {
        Call {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn tools_become_a_grammar_of_calls_and_answers_read_back() {
        let t = Tools::parse(Some(&weather()), None).unwrap().unwrap();
        let g = t.grammar(None).unwrap();
        let text = r#"{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}"#;
        assert!(allowed(&g, text));
        assert!(allowed(&g, r#"{"response": "Hello"}"#));
        assert!(!allowed(
            &g,
            r#"{"tool_call": {"name": "get_wether", "arguments": {"city": "P"}}}"#
        ));
        assert!(!allowed(
            &g,
            r#"{"tool_call": {"name": "get_weather", "arguments": {}}}"#
        ));
        assert_eq!(
            read(text),
            Answer {
                content: None,
                calls: vec![call("get_weather", r#"{"city":"Paris","unit":"c"}"#)]
            }
        );
        assert_eq!(read(r#"{"response": "Hi"}"#).content.as_deref(), Some("Hi"));
        // Required: words are not allowed.
        let t = Tools::parse(Some(&weather()), Some(&json!("required")))
            .unwrap()
            .unwrap();
        assert!(!allowed(
            &t.grammar(None).unwrap(),
            r#"{"response": "Hello"}"#
        ));
        // none: no tools; a named tool that does not exist: 400; nor a schema that cannot
        // be held.
        assert!(
            Tools::parse(Some(&weather()), Some(&json!("none")))
                .unwrap()
                .is_none()
        );
        let e = Tools::parse(
            Some(&weather()),
            Some(&json!({"type": "function", "function": {"name": "nope"}})),
        )
        .unwrap_err();
        assert!(e.message.contains("not a tool"), "{}", e.message);
        let e = Tools::parse(
            Some(&json!([{"type": "function", "function": {"name": "f",
                "parameters": {"type": "string", "pattern": "a+"}}}])),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("pattern"), "{}", e.message);
    }

    #[test]
    fn the_hermes_syntax_is_held_and_read_back_with_words_around_it() {
        let t = Tools::parse(Some(&weather()), None).unwrap().unwrap();
        let g = t.grammar(Some(ToolSyntax::Hermes)).unwrap();
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        assert!(allowed(&g, text));
        assert!(allowed(&g, "It is sunny in Oslo."));
        assert!(!allowed(
            &g,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"
        ));
        let req = Tools::parse(Some(&weather()), Some(&json!("required")))
            .unwrap()
            .unwrap();
        let g = req.grammar(Some(ToolSyntax::Hermes)).unwrap();
        assert!(allowed(&g, text));
        assert!(!allowed(&g, "It is sunny in Oslo."));
        // Several calls in one answer, unless the request says one.
        let twice = format!("{text}\n{text}");
        assert!(allowed(&g, &twice));
        assert_eq!(read(&twice).calls.len(), 2);
        let single = req
            .with_parallel(false)
            .grammar(Some(ToolSyntax::Hermes))
            .unwrap();
        assert!(allowed(&single, text));
        assert!(!allowed(&single, &twice));
        let oslo = call("get_weather", r#"{"city":"Oslo"}"#);
        assert_eq!(
            read(text),
            Answer {
                content: None,
                calls: vec![oslo.clone()]
            }
        );
        // Words before, two calls, the last unclosed, arguments as JSON text.
        let two = format!(
            "Let me look.\n{text}\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": \"{{\\\"city\\\": \\\"Rome\\\"}}\"}}"
        );
        assert_eq!(
            read(&two),
            Answer {
                content: Some("Let me look.".into()),
                calls: vec![oslo, call("get_weather", r#"{"city":"Rome"}"#)]
            }
        );
        // A call cut short after a whole one is dropped.
        let cut = format!("{text}\n<tool_call>\n{{\"name\": \"get_wea");
        assert_eq!(
            read(&cut),
            Answer {
                content: None,
                calls: vec![call("get_weather", r#"{"city":"Oslo"}"#)]
            }
        );
        // A block that is not a call stays words; so does an answer with no call.
        let bad = "<tool_call>\n{\"name\": 3}\n</tool_call>";
        assert_eq!(read(bad).content.as_deref(), Some(bad));
        assert!(read(bad).calls.is_empty());
        assert_eq!(read("Hi.").content.as_deref(), Some("Hi."));
    }

    #[test]
    fn a_conversation_with_calls_reaches_either_kind_of_template() {
        let t = Tools::parse(Some(&weather()), None).unwrap().unwrap();
        let mut asked = Message::new("assistant", "");
        asked.tool_calls = Some(json!([{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]));
        let mut result = Message::new("tool", "{\"sky\": \"clear\"}");
        result.tool_call_id = Some("call_1".into());
        let conv = [Message::new("user", "Weather in Oslo?"), asked, result];
        // Without tool syntax: the tools in the system message, the call as the envelope, the
        // result as the user's turn.
        let (plain, listed) = prompt_messages(&conv, Some(&t), None);
        assert!(listed.is_none());
        assert_eq!(plain[0].role, "system");
        assert!(plain[0].content.contains("get_weather"));
        assert_eq!(
            plain[2].content,
            r#"{"tool_call":{"arguments":{"city":"Oslo"},"name":"get_weather"}}"#
        );
        assert_eq!(plain[3].role, "user");
        assert_eq!(
            plain[3].content,
            r#"Result of tool call call_1: {"sky": "clear"}"#
        );
        assert!(plain.iter().all(|m| m.tool_calls.is_none()));
        // With it: the messages as they are, arguments as an object, the tools listed.
        let (native, listed) = prompt_messages(&conv, Some(&t), Some(ToolSyntax::Hermes));
        assert_eq!(native.len(), 3);
        assert_eq!(
            native[1].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            json!({"city": "Oslo"})
        );
        assert_eq!(listed.unwrap()[0]["function"]["name"], "get_weather");
        // The ChatML template the tests know has no tool syntax.
        let chatml = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(chatml.tool_syntax(), None);
        // A template that names the tag but never writes the tool list has none either;
        // one that writes it has.
        let mentions = "{% for m in messages %}{{ m.content }}{% endfor %} <tool_call>";
        assert_eq!(
            ChatTemplate::new(mentions, "", "").unwrap().tool_syntax(),
            None
        );
        let writes = "{% for t in tools %}{{ t.function.description }}{% endfor %}{% for m in messages %}{% for c in m.tool_calls or [] %}<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}{% endfor %}";
        assert_eq!(
            ChatTemplate::new(writes, "", "").unwrap().tool_syntax(),
            Some(ToolSyntax::Hermes)
        );
    }
}
