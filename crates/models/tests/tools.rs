//! Tool calls in a chat template's own syntax: the real Qwen 2.5 and Hermes 3 templates
//! (llama.cpp's test copies, from the llama-cpp-python==0.3.36 sdist fetched by
//! `scripts/fetch-models`) get the tool list, earlier calls and their results; and SmolLM2,
//! served under Qwen 2.5's template, calls a tool in that syntax, held there by constrained
//! decoding and read back.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use serde_json::{Value, json};
use sov_models::{
    chat::{ChatTemplate, Message, ToolSyntax},
    generate::{LanguageModel, Request},
    sample::SamplingParams,
    tools::{self, Tools},
};

fn template(name: &str) -> String {
    let path = common::models_dir()
        .join("llama-templates")
        .join(format!("{name}.jinja"));
    std::fs::read_to_string(path).unwrap()
}

const QWEN: &str = "Qwen-Qwen2.5-7B-Instruct";
const HERMES: &str = "NousResearch-Hermes-3-Llama-3.1-8B-tool_use";
const LLAMA3: &str = "meta-llama-Llama-3.3-70B-Instruct";
/// Qwen3-Coder writes calls as XML (`<function=…><parameter=…>`), a syntax sov does not
/// speak natively.
const QWEN3_CODER: &str = "Qwen3-Coder";

fn weather_and_time() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "description": "The city"}},
                "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "The time in a zone",
            "parameters": {"type": "object", "properties": {
                "zone": {"type": "string", "description": "An IANA zone"}},
                "required": ["zone"], "additionalProperties": false}}}
    ])
}

/// Those tools under `choice` (`None`: auto).
fn weather_and_time_tools(choice: Option<Value>) -> Tools {
    Tools::parse(Some(&weather_and_time()), choice.as_ref())
        .unwrap()
        .unwrap()
}

/// A user's question, the assistant's call (arguments as OpenAI's JSON text) and its result.
fn conversation() -> Vec<Message> {
    let mut asked = Message::new("assistant", "");
    asked.tool_calls = Some(json!([{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]));
    let mut result = Message::new("tool", "{\"sky\": \"clear\"}");
    result.tool_call_id = Some("call_1".into());
    vec![
        Message::new("user", "What is the weather in Oslo?"),
        asked,
        result,
    ]
}

fn render(t: &ChatTemplate, messages: &[Message], tools: Option<&Tools>) -> String {
    let (messages, listed) = tools::prompt_messages(messages, tools, t.tool_syntax());
    t.render_with_tools(&messages, listed.as_ref(), true)
        .unwrap()
}

#[test]
fn templates_with_tool_syntax_get_the_tools_the_calls_and_the_results() {
    let tools = weather_and_time_tools(None);
    let hermes = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    let llama = "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}<|eot_id|>";
    for (name, syntax, call) in [
        (QWEN, ToolSyntax::Hermes, hermes),
        (HERMES, ToolSyntax::Hermes, hermes),
        (LLAMA3, ToolSyntax::Llama3, llama),
    ] {
        let t = ChatTemplate::new(&template(name), "<|begin_of_text|>", "<|im_end|>").unwrap();
        assert_eq!(t.tool_syntax(), Some(syntax), "{name}");
        let text = render(&t, &conversation(), Some(&tools));
        eprintln!("{name}:\n{text}");
        // The tool list, as Python's json.dumps writes it.
        assert!(
            text.contains("\"name\": \"get_time\""),
            "{name}: no tool list"
        );
        // The earlier call in the template's syntax, its arguments an object again.
        assert!(text.contains(call), "{name}: no call");
        // (Llama 3's template writes a result with tojson, quoted, as Python's does.)
        assert!(
            text.contains("{\"sky\": \"clear\"}") || text.contains(r#""{\"sky\": \"clear\"}""#),
            "{name}: no result"
        );
        // No tools in the request: the conversation still reads natively.
        let text = render(&t, &conversation(), None);
        assert!(text.contains(call), "{name}: no call without tools");
    }
    // Hermes' and Qwen's results as they write them.
    let t = ChatTemplate::new(&template(QWEN), "", "").unwrap();
    let text = render(&t, &conversation(), Some(&tools));
    assert!(text.contains("<tool_response>\n{\"sky\": \"clear\"}\n</tool_response>"));
    assert!(text.ends_with("<|im_start|>assistant\n"));
    // Llama 3's tool list, written with tojson(indent=4) as Python writes it.
    let t = ChatTemplate::new(&template(LLAMA3), "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let text = render(&t, &conversation(), Some(&tools));
    assert!(
        text.contains("{\n    \"function\": {\n        \"description\": \"The time in a zone\","),
        "{text}"
    );
    // A template whose calls are in a syntax sov does not know gets the system-message way.
    let t = ChatTemplate::new(&template(QWEN3_CODER), "", "").unwrap();
    assert_eq!(t.tool_syntax(), None);
    let text = render(&t, &conversation(), Some(&tools));
    assert!(text.contains("You can use these tools"), "{text}");
    assert!(text.contains("Result of tool call call_1"), "{text}");
}

fn smollm2_under(template_name: &str) -> LanguageModel {
    let bytes =
        std::fs::read(common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let mut m = LanguageModel::from_bytes(&bytes).unwrap();
    m.template = ChatTemplate::new(&template(template_name), "", "<|im_end|>").unwrap();
    m
}

fn answer(m: &LanguageModel, messages: &[Message], tools: &Tools, seed: Option<u64>) -> String {
    let req = Request {
        prompt: m.chat_prompt_with_tools(messages, Some(tools)).unwrap(),
        max_tokens: 96,
        sampling: match seed {
            None => SamplingParams::greedy(),
            Some(seed) => SamplingParams {
                seed,
                ..SamplingParams::default()
            },
        },
        stop: vec![],
        logprobs: None,
        constraint: Some(std::sync::Arc::new(m.tool_grammar(tools).unwrap())),
        cache_scope: String::new(),
    };
    let out = m.generate(&req, &mut |_| true).unwrap();
    eprintln!("{:?} ({:?})", out.text, out.finish);
    out.text
}

#[test]
fn smollm2_under_qwens_template_calls_a_tool_in_its_syntax() {
    let m = smollm2_under(QWEN);
    let question = [Message::new("user", "What is the weather in Paris?")];
    // Required: calls, in the template's syntax, read back with arguments their schemas
    // allow (SmolLM2 asks for the weather and the time at once); with parallel_tool_calls
    // false, exactly one.
    let required = weather_and_time_tools(Some(json!("required")));
    let single = required.clone().with_parallel(false);
    for (tools, seed) in [
        (&required, None),
        (&required, Some(1)),
        (&single, None),
        (&single, Some(2)),
    ] {
        let text = answer(&m, &question, tools, seed);
        assert!(text.starts_with("<tool_call>\n"), "{text:?}");
        let read = tools::read(&text);
        assert!(!read.calls.is_empty(), "{text:?}");
        if std::ptr::eq(tools, &single) {
            assert!(text.ends_with("\n</tool_call>"), "{text:?}");
            assert_eq!(read.calls.len(), 1, "{text:?}");
        }
        assert_eq!(read.content, None);
        for call in &read.calls {
            let args: Value = serde_json::from_str(&call.arguments).unwrap();
            let key = match call.name.as_str() {
                "get_weather" => "city",
                "get_time" => "zone",
                other => panic!("called {other}"),
            };
            assert!(args[key].is_string(), "{args}");
            assert_eq!(args.as_object().unwrap().len(), 1, "{args}");
        }
    }
    // One named function: that one (as often as the model calls it).
    let named = weather_and_time_tools(Some(
        json!({"type": "function", "function": {"name": "get_time"}}),
    ));
    let read = tools::read(&answer(&m, &question, &named, None));
    assert!(!read.calls.is_empty());
    assert!(read.calls.iter().all(|c| c.name == "get_time"), "{read:?}");
    // Auto, after the result came back: words or a whole call, never a broken one.
    auto_answers_are_words_or_whole_calls(&m, "<tool_call>");
}

#[test]
fn smollm2_under_llama3s_template_calls_a_tool_in_its_syntax() {
    let m = smollm2_under(LLAMA3);
    let question = [Message::new("user", "What is the weather in Paris?")];
    let required = weather_and_time_tools(Some(json!("required")));
    for seed in [None, Some(1)] {
        let text = answer(&m, &question, &required, seed);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["parameters"].is_object(), "{text:?}");
        let read = tools::read(&text);
        assert_eq!(read.calls.len(), 1, "{text:?}");
        assert!(["get_weather", "get_time"].contains(&read.calls[0].name.as_str()));
    }
    auto_answers_are_words_or_whole_calls(&m, "{");
}

/// Under `auto`, after a call's result came back: each answer is words, or (if it opens as a
/// call, with `opening`) one whole call.
fn auto_answers_are_words_or_whole_calls(m: &LanguageModel, opening: &str) {
    let auto = weather_and_time_tools(None);
    for seed in [None, Some(3), Some(4)] {
        let text = answer(m, &conversation(), &auto, seed);
        let read = tools::read(&text);
        if text.trim_start().starts_with(opening) {
            assert!(!read.calls.is_empty(), "{text:?}");
        } else {
            assert!(read.calls.is_empty() && read.content.is_some(), "{text:?}");
        }
    }
}
