//! Chat prompts: the model's own Jinja template (`tokenizer.chat_template` in GGUF metadata)
//! rendered with minijinja the way Hugging Face's `apply_chat_template` renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`). A model
//! without a template gets ChatML, as llama.cpp gives it.

use serde::{Deserialize, Serialize};

use crate::{Error, Result, gguf::Gguf, tokenizer::Tokenizer};

/// ChatML, the template used when a model names none.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Longest template source accepted (templates with tools run to a few KiB).
const MAX_TEMPLATE: usize = 256 << 10;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos: String,
    eos: String,
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
        let t = ChatTemplate {
            source: source.into(),
            bos: bos.into(),
            eos: eos.into(),
        };
        t.env()
            .template_from_str(&t.source)
            .map_err(|e| err(format!("the chat template does not compile: {e}")))?;
        Ok(t)
    }

    /// The template a GGUF file carries, or ChatML.
    pub fn from_gguf(g: &Gguf, tok: &Tokenizer) -> Result<Self> {
        let source = g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .unwrap_or(CHATML);
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

    fn env(&self) -> minijinja::Environment<'_> {
        let mut env = minijinja::Environment::new();
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
                minijinja::Value::from_pairs([
                    ("role", minijinja::Value::from(m.role.as_str())),
                    ("content", minijinja::Value::from(m.content.as_str())),
                ])
            })
            .collect();
        tmpl.render(minijinja::context! {
            messages => messages.as_slice(),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| err(format!("rendering the chat template: {e}")))
    }
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
}
