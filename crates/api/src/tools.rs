//! Tool calls on `/v1/chat/completions` (`tools`, `tool_choice`, `role: tool` messages), for
//! any model: the tools are described to the model in a system message, and constrained
//! decoding holds its answer to one JSON object, either `{"tool_call": {"name", "arguments"}}`
//! with the arguments the tool's `parameters` schema describes, or (unless a call is
//! required) `{"response": "…"}` (llama.cpp's generic tool format, for templates without
//! tool syntax of their own). The answer is parsed back into OpenAI's `tool_calls`.

use serde_json::{Value, json};
use sov_models::constrain::Grammar;

/// A request's tools that cannot be used, and the field at fault (the gateway answers 400).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid {
    pub(crate) message: String,
    pub(crate) param: &'static str,
}

type OaiError = Invalid;

/// Most tools one request may declare.
const MAX_TOOLS: usize = 64;

/// One declared function.
#[derive(Debug, Clone)]
struct Tool {
    name: String,
    description: String,
    parameters: Value,
}

/// Whether `name` is 1 to 64 letters, digits, `_` or `-` (OpenAI's rule for function and
/// schema names).
pub(crate) fn is_plain_name(name: &str) -> bool {
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
pub(crate) struct Tools {
    list: Vec<Tool>,
    choice: Choice,
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
    pub(crate) fn parse(
        tools: Option<&Value>,
        choice: Option<&Value>,
    ) -> Result<Option<Self>, OaiError> {
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
        Ok(Some(Tools { list, choice }))
    }

    /// The grammar of the answer: a call of one of the allowed tools, or (auto) words.
    pub(crate) fn grammar(&self) -> Result<Grammar, OaiError> {
        let mut alts: Vec<Value> = self
            .list
            .iter()
            .filter(|t| match &self.choice {
                Choice::Named(n) => *n == t.name,
                _ => true,
            })
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"tool_call": {
                        "type": "object",
                        "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                        "required": ["name", "arguments"],
                        "additionalProperties": false
                    }},
                    "required": ["tool_call"],
                    "additionalProperties": false
                })
            })
            .collect();
        if self.choice == Choice::Auto {
            alts.push(json!({
                "type": "object",
                "properties": {"response": {"type": "string"}},
                "required": ["response"],
                "additionalProperties": false
            }));
        }
        Grammar::from_schema(&json!({ "anyOf": alts }))
            .map_err(|e| bad(format!("a tool's parameters: {e}"), "tools"))
    }

    /// The system message that tells the model its tools and how to answer.
    pub(crate) fn system_text(&self) -> String {
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

/// What the model answered, read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// A call: the function's name and its arguments (JSON text).
    Call { name: String, arguments: String },
    /// Words.
    Words(String),
}

/// Read the model's answer (`None`: it is not the JSON asked for, e.g. cut by max_tokens).
pub(crate) fn read_answer(text: &str) -> Option<Answer> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    if let Some(call) = v.get("tool_call") {
        return Some(Answer::Call {
            name: call.get("name")?.as_str()?.to_owned(),
            arguments: call.get("arguments")?.to_string(),
        });
    }
    Some(Answer::Words(v.get("response")?.as_str()?.to_owned()))
}

/// An assistant message's earlier tool calls, written the way the model is asked to write
/// them, so a conversation reads consistently.
pub(crate) fn calls_as_text(calls: &Value) -> Option<String> {
    let first = calls.as_array()?.first()?;
    let f = first.get("function")?;
    let args: Value = match f.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        Some(v) => v.clone(),
        None => json!({}),
    };
    Some(json!({"tool_call": {"name": f.get("name")?, "arguments": args}}).to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use sov_models::constrain::Matcher;

    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": false}}}])
    }

    fn allowed(g: &Grammar, text: &str) -> bool {
        let mut m = Matcher::new(Arc::new(g.clone()));
        m.advance(text.as_bytes()) && m.can_end()
    }

    #[test]
    fn tools_become_a_grammar_of_calls_and_answers_read_back() {
        let t = Tools::parse(Some(&weather()), None).unwrap().unwrap();
        let g = t.grammar().unwrap();
        let call = r#"{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}"#;
        assert!(allowed(&g, call));
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
            read_answer(call),
            Some(Answer::Call {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris","unit":"c"}"#.into()
            })
        );
        // Required: words are not allowed.
        let t = Tools::parse(Some(&weather()), Some(&json!("required")))
            .unwrap()
            .unwrap();
        assert!(!allowed(&t.grammar().unwrap(), r#"{"response": "Hello"}"#));
        // none: no tools; a named tool that does not exist: 400.
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
    }
}
