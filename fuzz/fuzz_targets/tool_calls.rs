//! A request's tools, a conversation with earlier calls and results, and a model's answer
//! never panic sov: the tools are read (and compiled to the envelope, Hermes and Llama 3
//! grammars, which then follow the answer byte by byte), the conversation is written for a
//! template with tool syntax and for one without, and the answer is read back. The bytes are cut in three: tools JSON,
//! messages JSON, answer text.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sov_models::{
    chat::{ChatTemplate, Message, ToolSyntax},
    constrain::Matcher,
    tools::{self, Tools},
};

/// The core of Qwen 2.5's template: the tool list, calls and results.
const TEMPLATE: &str = "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson(indent=2) }}</tool_call>{% endfor %}{% else %}<|{{ m.role }}|>{{ m.content }}{% endif %}{% endfor %}";

fuzz_target!(|data: &[u8]| {
    let (tools, rest) = data.split_at(data.len() / 3);
    let (messages, text) = rest.split_at(rest.len() / 2);
    let tools = serde_json::from_slice::<serde_json::Value>(tools).ok();
    let parsed = Tools::parse(tools.as_ref(), None).ok().flatten();
    let answer = String::from_utf8_lossy(text);
    let _ = tools::read(&answer);
    let Ok(template) = ChatTemplate::new(TEMPLATE, "", "") else {
        return;
    };
    let syntaxes = [None, Some(ToolSyntax::Hermes), Some(ToolSyntax::Llama3)];
    if let Ok(msgs) = serde_json::from_slice::<Vec<Message>>(messages) {
        for syntax in syntaxes {
            let (m, listed) = tools::prompt_messages(&msgs, parsed.as_ref(), syntax);
            let _ = template.render_with_tools(&m, listed.as_ref(), true);
        }
    }
    let Some(t) = parsed else { return };
    for syntax in syntaxes {
        let Ok(g) = t.grammar(syntax) else { continue };
        let mut m = Matcher::new(Arc::new(g));
        for b in text {
            if !m.advance(&[*b]) {
                break;
            }
        }
        let _ = m.can_end();
    }
});
