//! Chat prompts: the model's own Jinja template (`tokenizer.chat_template` in GGUF metadata)
//! rendered with minijinja the way Hugging Face's `apply_chat_template` renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`). A model
//! without a template gets ChatML, as llama.cpp gives it.

use serde::{Deserialize, Serialize};

use crate::{Error, Result, gguf::Gguf, tokenizer::Tokenizer};

/// ChatML, the template used when a model names none.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Longest template source accepted (templates with tools run to a few KiB).
pub const MAX_TEMPLATE: usize = 256 << 10;

/// Most template instructions one render may run (minijinja's fuel): real templates use a
/// few thousand per message; a loop of a million runs out and is an error.
const MAX_FUEL: u64 = 10_000_000;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// What was said.
    pub content: String,
    /// An assistant's tool calls, as templates with tool syntax read them:
    /// `[{"type": "function", "function": {"name", "arguments": {…}}}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

/// How a template lets the model call tools, where it has a way of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` (Hermes 2 and 3, Qwen 2.5
    /// and 3, and the many templates that follow them); the tool list goes to the template
    /// as `tools`, results come back as `role: tool` messages.
    Hermes,
    /// `{"name": …, "parameters": {…}}` as the whole answer (Llama 3.1, 3.2 and 3.3); the
    /// tool list goes to the template as `tools`, results as `role: tool` messages.
    Llama3,
}

/// A chat template and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos: String,
    eos: String,
    tool_syntax: Option<ToolSyntax>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Template(msg.into())
}

impl ChatTemplate {
    /// A template from its Jinja source; it is compiled once here so a broken one is refused
    /// at load, not at the first request.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        if source.len() > MAX_TEMPLATE {
            return Err(err(format!(
                "the chat template is {} bytes; at most {MAX_TEMPLATE} are accepted",
                source.len()
            )));
        }
        let mut t = ChatTemplate {
            source: source.into(),
            bos: bos.into(),
            eos: eos.into(),
            tool_syntax: None,
        };
        t.env()
            .template_from_str(&t.source)
            .map_err(|e| err(format!("the chat template does not compile: {e}")))?;
        t.tool_syntax = t.probe_tool_syntax();
        Ok(t)
    }

    /// The template a GGUF file carries, or ChatML.
    pub fn from_gguf(g: &Gguf, tok: &Tokenizer) -> Result<Self> {
        Self::from_gguf_or(g, tok, None)
    }

    /// [`Self::from_gguf`], with `source` in place of the file's own template if given (its
    /// BOS and EOS still the file's).
    pub fn from_gguf_or(g: &Gguf, tok: &Tokenizer, source: Option<&str>) -> Result<Self> {
        let source = source.unwrap_or_else(|| {
            g.get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .unwrap_or(CHATML)
        });
        let text = |key: &str| {
            g.get(key)
                .and_then(|v| v.as_u64())
                .map(|id| tok.decode_special(&[id as u32]))
                .unwrap_or_default()
        };
        Self::new(
            source,
            &text("tokenizer.ggml.bos_token_id"),
            &text("tokenizer.ggml.eos_token_id"),
        )
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Another template with this one's BOS and EOS texts.
    pub fn with_source(&self, source: &str) -> Result<Self> {
        Self::new(source, &self.bos, &self.eos)
    }

    /// The template's own tool syntax, if it has one (and writes the `tools` it is given).
    pub fn tool_syntax(&self) -> Option<ToolSyntax> {
        self.tool_syntax
    }

    /// Which syntax the template writes, found by what it does: given a probe tool and a
    /// conversation in which the assistant called it, it must write the tool's description
    /// (it shows the model its tools) and the call in one of the known forms. A template that
    /// only mentions tools, or writes calls its own way (XML parameters, special tokens),
    /// has none here, and gets the system-message way.
    fn probe_tool_syntax(&self) -> Option<ToolSyntax> {
        if !self.source.contains("tool") {
            return None;
        }
        let probe = serde_json::json!([{"type": "function", "function": {
            "name": "sov_probe_tool", "description": "sov probe description",
            "parameters": {"type": "object", "properties": {
                "probe_arg": {"type": "integer", "description": "a number"}}}}}]);
        let mut call = Message::new("assistant", "");
        call.tool_calls = Some(serde_json::json!([{"id": "call_probe", "type": "function",
            "function": {"name": "sov_probe_tool", "arguments": {"probe_arg": 1}}}]));
        let mut result = Message::new("tool", "probe result");
        result.tool_call_id = Some("call_probe".into());
        let text = self
            .render_with_tools(
                &[Message::new("user", "Hello"), call, result],
                Some(&probe),
                true,
            )
            .ok()?;
        if !text.contains("sov probe description") {
            return None;
        }
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if squeezed.contains(
            r#"<tool_call>{"name":"sov_probe_tool","arguments":{"probe_arg":1}}</tool_call>"#,
        ) {
            Some(ToolSyntax::Hermes)
        } else if squeezed.contains(r#"{"name":"sov_probe_tool","parameters":{"probe_arg":1}}"#) {
            Some(ToolSyntax::Llama3)
        } else {
            None
        }
    }

    fn env(&self) -> minijinja::Environment<'_> {
        let mut env = minijinja::Environment::new();
        // A template from a peer's model file renders at load (the tool-syntax probe) and
        // for every chat: its loops may not run on without end.
        env.set_fuel(Some(MAX_FUEL));
        if let Ok(syntax) = env
            .syntax()
            .to_builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Hugging Face's `tojson` is Python's `json.dumps`: `", "` and `": "` between items,
        // non-ASCII kept, keys in their order. Templates with tools write the tool list and
        // earlier calls' arguments with it, so the model reads them as it was trained to.
        env.add_filter(
            "tojson",
            |v: minijinja::Value,
             kwargs: minijinja::value::Kwargs|
             -> std::result::Result<minijinja::Value, minijinja::Error> {
                let indent: Option<usize> = kwargs.get("indent")?;
                let _: Option<bool> = kwargs.get("ensure_ascii")?;
                let _: Option<bool> = kwargs.get("sort_keys")?;
                kwargs.assert_all_used()?;
                let mut out = String::new();
                py_json(&v, indent, 0, &mut out)?;
                Ok(minijinja::Value::from_safe_string(out))
            },
        );
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`Self::render`] with a tool list for the template (`tools`: OpenAI's
    /// `[{"type": "function", "function": {…}}]`, as Hugging Face passes it), and messages'
    /// `tool_calls` and `tool_call_id` as the template expects them.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(err("a chat needs at least one message"));
        }
        let env = self.env();
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| err(format!("the chat template does not compile: {e}")))?;
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| {
                let mut pairs = vec![
                    ("role", minijinja::Value::from(m.role.as_str())),
                    ("content", minijinja::Value::from(m.content.as_str())),
                ];
                if let Some(calls) = &m.tool_calls {
                    pairs.push((
                        "tool_calls",
                        minijinja::Value::from(minijinja::value::Serde(calls)),
                    ));
                }
                if let Some(id) = &m.tool_call_id {
                    pairs.push(("tool_call_id", minijinja::Value::from(id.as_str())));
                }
                minijinja::Value::from_pairs(pairs)
            })
            .collect();
        // No tools: `tools` is undefined, as templates test it (`tools is defined`, `tools |
        // length`); Python's None would not be iterable, minijinja's none is.
        let tools = tools.map_or(minijinja::Value::UNDEFINED, |t| {
            minijinja::Value::from(minijinja::value::Serde(t))
        });
        tmpl.render(minijinja::context! {
            messages => messages.as_slice(),
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| err(format!("rendering the chat template: {e}")))
    }
}

/// Most levels of nesting `tojson` writes.
const MAX_JSON_DEPTH: usize = 64;

/// `v` as Python's `json.dumps(v, ensure_ascii=False, indent=indent)` writes it.
fn py_json(
    v: &minijinja::Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind as K;
    if depth > MAX_JSON_DEPTH {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "tojson: nested too deeply",
        ));
    }
    let quote = |s: &str, out: &mut String| {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    };
    let (open, close, keyed) = match v.kind() {
        K::Undefined | K::None => {
            out.push_str("null");
            return Ok(());
        }
        K::Bool => {
            out.push_str(if v.is_true() { "true" } else { "false" });
            return Ok(());
        }
        K::Number => {
            out.push_str(&v.to_string());
            return Ok(());
        }
        K::String => {
            quote(v.as_str().unwrap_or_default(), out);
            return Ok(());
        }
        K::Map => ('{', '}', true),
        K::Seq | K::Iterable => ('[', ']', false),
        _ => {
            quote(&v.to_string(), out);
            return Ok(());
        }
    };
    // Items (a map's keys and values, or a list's items), as Python lays them out.
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    out.push(open);
    let mut first = true;
    for item in v.try_iter()? {
        if !first {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        first = false;
        newline(out, depth + 1);
        if keyed {
            match item.as_str() {
                Some(s) => quote(s, out),
                None => quote(&item.to_string(), out),
            }
            out.push_str(": ");
            py_json(&v.get_item(&item)?, indent, depth + 1, out)?;
        } else {
            py_json(&item, indent, depth + 1, out)?;
        }
    }
    if !first {
        newline(out, depth);
    }
    out.push(close);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let out = t
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_blocks_and_exceptions_work() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n  [{{ m.role.upper() }}] {{ m.content.strip() }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(&[Message::new("user", "  hello ")], false)
            .unwrap();
        // What jinja2 3.1.6 gives with trim_blocks and lstrip_blocks.
        assert_eq!(out, "<s>  [USER] hello\n");
        let e = t.render(&[Message::new("tool", "x")], false).unwrap_err();
        assert!(e.to_string().contains("bad role tool"), "{e}");
    }

    #[test]
    fn broken_templates_are_refused_at_load() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        assert!(
            ChatTemplate::new(CHATML, "", "")
                .unwrap()
                .render(&[], true)
                .is_err()
        );
    }

    #[test]
    fn tojson_writes_as_pythons_json_dumps() {
        let src = "{{ messages[0].tool_calls | tojson }}|{{ messages[0].tool_calls[0] | tojson(indent=2) }}|{{ tools | tojson }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let mut m = Message::new("assistant", "");
        m.tool_calls = Some(serde_json::json!([{"a": [1, 2.5, true, null], "é": "x\"y", "e": {}}]));
        let out = t
            .render_with_tools(&[m], Some(&serde_json::json!([])), false)
            .unwrap();
        assert_eq!(
            out,
            "[{\"a\": [1, 2.5, true, null], \"e\": {}, \"é\": \"x\\\"y\"}]|{\n  \"a\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"e\": {},\n  \"é\": \"x\\\"y\"\n}|[]"
        );
        // A template whose loops would run a billion times runs out of fuel instead.
        let slow = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x{% endfor %}{% endfor %}{% endfor %}";
        let e = ChatTemplate::new(slow, "", "")
            .unwrap()
            .render(&[Message::new("user", "Hi")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fuel"), "{e}");
        // Nesting without end is refused, not followed.
        let mut deep = serde_json::json!(1);
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let mut m = Message::new("assistant", "");
        m.tool_calls = Some(deep);
        assert!(t.render_with_tools(&[m], None, false).is_err());
    }
}
