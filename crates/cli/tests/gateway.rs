//! Issue 5: models through the CLI and the OpenAI-compatible gateway of `sov node run`, with
//! the real models (SmolLM2-135M-Instruct Q4_1, all-MiniLM-L6-v2; `scripts/fetch-models`)
//! and the official `openai` Python client (`scripts/openai-venv`, pinned).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Home, models_dir, root, script, signal, wait};
use serde_json::Value;

#[test]
fn models_are_imported_run_and_served_to_the_openai_client() {
    let models = models_dir();
    let python = script("openai-venv", &[]).trim().to_string();
    let mut home = Home::new();
    let gguf = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let id = home.ok(&[
        "model",
        "import",
        gguf.to_str().unwrap(),
        "--name",
        "smollm2",
        "--license",
        "Apache-2.0",
    ]);
    assert!(id.trim().starts_with("bafyr4i"), "{id}");
    home.ok(&[
        "model",
        "import",
        models.join("all-MiniLM-L6-v2").to_str().unwrap(),
        "--name",
        "minilm",
    ]);
    // A second model of the same name is refused.
    let again = home.run(&[
        "model",
        "import",
        gguf.to_str().unwrap(),
        "--name",
        "smollm2",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already here"));
    let ls: Value = serde_json::from_str(&home.ok(&["model", "ls", "--json"])).unwrap();
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["minilm", "smollm2"]);
    assert_eq!(ls[1]["kind"], "language");
    assert_eq!(ls[1]["context_length"], 8192);
    assert_eq!(ls[1]["signer"].as_str(), Some(home.did().as_str()));

    // `sov run` with the model loaded here: the JSON line the issue asks for.
    let question = "What is the capital of France?";
    let system = "You are a helpful assistant.";
    let run = |home: &Home| -> Value {
        let out = home.ok(&[
            "run",
            "smollm2",
            question,
            "--system",
            system,
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--json",
        ]);
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let local = run(&home);
    assert!(local["text"].as_str().unwrap().contains("Paris"), "{local}");
    for k in [
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_per_s",
        "decode_tokens_per_s",
    ] {
        assert!(local[k].as_f64().unwrap() > 0.0, "{k}: {local}");
    }

    // `sov chat` reads turns from standard input and keeps the conversation.
    let chat = {
        use std::io::Write as _;
        let mut child = home
            .cmd(&[
                "chat",
                "smollm2",
                "--system",
                system,
                "--temperature",
                "0",
                "--max-tokens",
                "24",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{question}\n\n/reset\n{question}\n/exit\n").as_bytes())
            .unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
    let said = String::from_utf8_lossy(&chat.stdout);
    // Asked twice (the second time after /reset), answered the same way twice.
    assert_eq!(said.matches("Paris").count(), 2, "{said}");
    assert!(String::from_utf8_lossy(&chat.stderr).contains("conversation cleared"));

    // The node serves the same models through /v1, to the official client.
    home.start(&["--threads", "2"]);
    let node: Value =
        serde_json::from_str(&std::fs::read_to_string(home.node_json()).unwrap()).unwrap();
    let base = format!("{}/v1", node["api"].as_str().unwrap());
    let token = std::fs::read_to_string(home.dir.path().join("admin.token")).unwrap();
    // The same weights with Qwen 2.5's chat template, which has tool syntax of its own
    // (imported through the running node's API). A template that does not parse is refused
    // and nothing is stored.
    let import_with = |template: &std::path::Path| {
        home.run(&[
            "model",
            "import",
            gguf.to_str().unwrap(),
            "--name",
            "smollm2-tools",
            "--chat-template",
            template.to_str().unwrap(),
        ])
    };
    let broken = home.dir.path().join("broken.jinja");
    std::fs::write(&broken, "{% for m in messages %}").unwrap();
    let refused = import_with(&broken);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("template"), "{why}");
    let imported = import_with(&models.join("llama-templates/Qwen-Qwen2.5-7B-Instruct.jinja"));
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let shown: Value =
        serde_json::from_str(&home.ok(&["model", "show", "smollm2-tools", "--json"])).unwrap();
    assert!(shown["chat_template"].is_string(), "{shown}");
    assert_ne!(shown["chat_template"], shown["weights"]);
    let reference = root().join("crates/models/fixtures/minilm-reference.json");
    let out = Command::new(&python)
        .arg(root().join("crates/cli/tests/openai_client.py"))
        .args([&base, token.trim(), reference.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the openai client failed: {}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        home.log()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(
        r["models"],
        serde_json::json!(["minilm", "smollm2", "smollm2-tools"])
    );
    let chat = &r["chat"];
    assert!(
        chat["content"].as_str().unwrap().contains("Paris"),
        "{chat}"
    );
    assert_eq!(chat["role"], "assistant");
    assert_eq!(chat["finish_reason"], "stop");
    assert_eq!(chat["object"], "chat.completion");
    let usage = chat["usage"].as_array().unwrap();
    assert_eq!(
        usage[2].as_u64(),
        Some(usage[0].as_u64().unwrap() + usage[1].as_u64().unwrap())
    );
    // Streamed: the same text in several pieces, a finish reason, and usage at the end.
    let stream = &r["stream"];
    assert_eq!(stream["content"], chat["content"]);
    assert!(stream["chunks"].as_u64().unwrap() > 1);
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["usage"][0], usage[0]);
    // The CLI's local run and the node agree (same engine, temperature 0).
    assert_eq!(local["text"], chat["content"]);
    assert_eq!(r["length"]["finish_reason"], "length");
    assert_eq!(r["length"]["completion_tokens"], 5);
    assert_eq!(r["completion"]["finish_reason"], "stop");
    assert!(
        !r["completion"]["text"].as_str().unwrap().contains('.'),
        "the stop sequence is not shown"
    );
    // Log-probabilities: " Paris" first, with llama.cpp's log-probability for it
    // (crates/models/fixtures/smollm2-logprobs.json: -0.2589).
    let clp = &r["completion_logprobs"];
    assert_eq!(clp["tokens"][0], " Paris", "{clp}");
    assert!(
        (clp["first"].as_f64().unwrap() + 0.2589).abs() < 1e-3,
        "{clp}"
    );
    assert_eq!(clp["top"].as_object().unwrap().len(), 5);
    assert_eq!(clp["offsets"][0], 0);
    let chat_lp = &r["chat_logprobs"];
    assert_eq!(chat_lp["joined"], chat_lp["content"], "{chat_lp}");
    assert_eq!(chat_lp["first_is_top"], true);
    assert_eq!(chat_lp["n_top"], 3);
    let e = &r["embeddings"];
    assert_eq!(
        (e["count"].as_u64(), e["dims"].as_u64()),
        (Some(3), Some(384))
    );
    assert!(e["vs_reference"].as_f64().unwrap() >= 0.999, "{e}");
    assert!(e["float_vs_base64"].as_f64().unwrap() > 0.999_999, "{e}");
    assert!(e["near"].as_f64().unwrap() > 0.7 && e["far"].as_f64().unwrap() < 0.1);
    let errors = &r["errors"];
    assert_eq!(errors["wrong_key"]["status"], 401);
    assert_eq!(errors["wrong_key"]["type"], "AuthenticationError");
    assert_eq!(errors["unknown_model"]["status"], 404);
    assert_eq!(errors["bad_temperature"]["status"], 400);
    assert_eq!(errors["embed_with_llm"]["status"], 400);
    // The official client gets JSON the schema describes (constrained decoding).
    assert_eq!(
        r["structured"]["keys"],
        serde_json::json!(["city", "country"]),
        "{}",
        r["structured"]
    );
    assert_eq!(r["structured"]["finish_reason"], "stop");
    // Tools: a parsed call with arguments the parameters' schema holds; a tool result sent
    // back is answered; streamed, the same call arrives as deltas.
    let tc = &r["tool_call"];
    assert_eq!(tc["name"], "get_weather", "{tc}");
    assert_eq!(tc["finish_reason"], "tool_calls", "{tc}");
    assert!(tc["args"]["city"].is_string(), "{tc}");
    assert!(
        ["celsius", "fahrenheit"].contains(&tc["args"]["unit"].as_str().unwrap()),
        "{tc}"
    );
    assert!(tc["id"].as_str().unwrap().starts_with("call_"), "{tc}");
    assert_eq!(r["after_tool"]["answered"], true, "{}", r["after_tool"]);
    assert_eq!(
        r["tool_stream"]["name"], "get_weather",
        "{}",
        r["tool_stream"]
    );
    assert_eq!(r["tool_stream"]["args"], tc["args"], "{}", r["tool_stream"]);
    assert!(
        tc["written"].as_str().unwrap().starts_with('{')
            && tc["written"].as_str().unwrap().contains("\"tool_call\""),
        "SmolLM2's own template has no tool syntax: the JSON envelope ({tc})"
    );
    // The model whose template has tool syntax: the call written in that syntax, parsed the
    // same way; the result sent back (a `role: tool` message the template renders itself)
    // is answered; streamed, the same call.
    let native = &r["native"];
    let tc = &native["tool_call"];
    assert!(
        tc["written"]
            .as_str()
            .unwrap()
            .starts_with("<tool_call>\n{\"name\": \"get_weather\""),
        "{tc}"
    );
    assert_eq!(tc["name"], "get_weather", "{tc}");
    assert_eq!(tc["finish_reason"], "tool_calls", "{tc}");
    assert!(tc["args"]["city"].is_string(), "{tc}");
    // (Several calls may come in one answer: parallel_tool_calls; each has its own id.)
    assert!(tc["calls"].as_u64().unwrap() >= 1, "{tc}");
    assert_eq!(tc["ids_distinct"], true, "{tc}");
    assert_eq!(native["after_tool"]["answered"], true, "{native}");
    assert_eq!(native["tool_stream"]["args"], tc["args"], "{native}");
    assert_eq!(
        r["concurrency"],
        serde_json::json!(["long: started", "others: done", "long: done"])
    );

    // Every kind of /v1 answer, and every streamed chunk, validates against OpenAI's
    // published OpenAPI document.
    let out = Command::new(&python)
        .arg(root().join("crates/cli/tests/openapi_check.py"))
        .args([
            &base,
            token.trim(),
            models.join("openai-openapi/openapi.yml").to_str().unwrap(),
            "smollm2",
            "minilm",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the OpenAPI check failed: {}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        home.log()
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failures"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["spec_version"], "2.3.0");
    // Streamed log-probabilities arrive with the chunks whose tokens they are.
    let slp = &v["stream_logprobs"];
    assert!(slp["chunks_with_logprobs"].as_u64().unwrap() >= 2, "{slp}");
    assert_eq!(slp["tokens"], slp["text"], "{slp}");
    // n = 2: two choices, indexed 0 and 1, the prompt counted once in the usage; streamed,
    // both choices' chunks, each finished, one usage chunk and one [DONE].
    let n2 = &v["n2"];
    assert_eq!(n2["indices"], serde_json::json!([0, 1]), "{n2}");
    assert_eq!(n2["stream_indices"], serde_json::json!([0, 1]), "{n2}");
    assert_eq!(n2["stream_finishes"], 2, "{n2}");
    assert_eq!(n2["stream_usage"].as_array().unwrap().len(), 1, "{n2}");
    assert_eq!(n2["stream_done"], true, "{n2}");
    let u = &n2["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert!(
        u["completion_tokens"].as_u64().unwrap() > 6,
        "two choices' tokens: {u}"
    );
    // Structured output: JSON the schema describes, plain and streamed, chat and
    // completions; any JSON object for json_object; formats that cannot be honoured: 400.
    let st = &v["structured"];
    for k in ["schema_valid", "stream_valid", "completion_valid"] {
        assert_eq!(st[k], true, "{k}: {st:#}");
    }
    // A free JSON object: whole if the model ended it; cut by max_tokens otherwise (as
    // OpenAI's is), but an object from its first byte. (This small model tends to add keys
    // until it runs out of tokens.)
    assert!(
        st["object_valid"] == true
            || (st["object_finish"] == "length"
                && st["object_text"].as_str().unwrap().starts_with('{')),
        "{st:#}"
    );
    assert_eq!(st["schema_finish"], "stop", "{st:#}");
    // Inputs past the model's length are refused with OpenAI's code, never cut.
    assert_eq!(v["context_code"], "context_length_exceeded", "{v}");
    assert_eq!(v["embedding_code"], "context_length_exceeded", "{v}");
    // The one documented exception: a streamed completion's chunks before the last carry
    // finish_reason null (the document has no schema for them; OpenAI's API does the same).
    for e in v["exceptions"].as_array().unwrap() {
        let e = e.as_str().unwrap();
        assert!(
            e.starts_with("completion stream chunk ")
                && e.ends_with("finish_reason null before the end"),
            "{e}"
        );
    }
    assert!(v["checked"].as_array().unwrap().len() >= 20, "{v}");

    // `sov run` while the node runs goes through its gateway, and agrees.
    let remote = run(&home);
    assert_eq!(remote["text"], local["text"]);
    assert!(remote["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    // `sov model ls` through the API.
    let ls: Value = serde_json::from_str(&home.ok(&["model", "ls", "--json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 3);

    let pid = home.pid();
    signal(pid, "-TERM");
    wait("the node to stop", || !home.node_json().exists());
}

#[test]
fn a_model_is_shared_and_pulled_between_node_processes() {
    let models = models_dir();
    let mut a = Home::new();
    let mut b = Home::new();
    let boot = a.start(&[]);
    b.start(&["--bootstrap", &boot]);
    wait("A and B to connect", || {
        let v: Value = serde_json::from_str(&a.ok(&["peers", "--json"])).unwrap();
        !v.as_array().unwrap().is_empty()
    });
    // Through A's API: import, then share with B.
    let imported: Value = serde_json::from_str(&a.ok(&[
        "model",
        "import",
        models.join("all-MiniLM-L6-v2").to_str().unwrap(),
        "--name",
        "minilm",
        "--json",
    ]))
    .unwrap();
    let id = imported["id"].as_str().unwrap().to_string();
    // A offers it on gossip: B lists the offer, signed by A, before pulling anything.
    wait("B to hear A's offer", || {
        let v: Value =
            serde_json::from_str(&b.ok(&["model", "ls", "--offered", "--json"])).unwrap();
        v[0]["id"].as_str() == Some(id.as_str())
    });
    let offered: Value =
        serde_json::from_str(&b.ok(&["model", "ls", "--offered", "--json"])).unwrap();
    assert_eq!(offered[0]["signer"].as_str(), Some(a.did().as_str()));
    // B cannot pull it before A shares it.
    let refused = b.run(&["model", "pull", &id]);
    assert!(!refused.status.success());
    a.ok(&["model", "share", "minilm", &b.did()]);
    let pulled: Value = serde_json::from_str(&b.ok(&["model", "pull", &id, "--json"])).unwrap();
    assert_eq!(pulled["name"], "minilm");
    assert_eq!(pulled["signer"].as_str(), Some(a.did().as_str()));
    assert_eq!(pulled["kind"], "embedding");
    let ls: Value = serde_json::from_str(&b.ok(&["model", "ls", "--json"])).unwrap();
    assert_eq!(ls[0]["id"].as_str(), Some(id.as_str()));
    // An embedding model does not chat, and says so.
    let run = b.run(&["run", "minilm", "hello"]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("embedding model"), "{err}");
    // Removing it on B leaves A's copy.
    b.ok(&["model", "rm", "minilm"]);
    let ls: Value = serde_json::from_str(&b.ok(&["model", "ls", "--json"])).unwrap();
    assert!(ls.as_array().unwrap().is_empty());
    let ls: Value = serde_json::from_str(&a.ok(&["model", "ls", "--json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1);
    for h in [&a, &b] {
        signal(h.pid(), "-TERM");
    }
    wait("the nodes to stop", || {
        !a.node_json().exists() && !b.node_json().exists()
    });
}
