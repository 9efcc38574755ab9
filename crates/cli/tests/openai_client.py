"""The official `openai` Python client (pinned in scripts/openai-requirements.txt) against a
running sov node: chat (plain and streamed), completions, embeddings, errors, and requests
served while a long generation runs. Prints one JSON line of findings; the Rust test
(`crates/cli/tests/gateway.rs`) checks them. Exits non-zero on the first broken promise.

    python openai_client.py BASE_URL TOKEN MINILM_REFERENCE.json
"""
import json, math, sys, threading
import openai

base, token, reference = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=300)
out = {"openai_version": openai.__version__}

# Models: the registry names.
out["models"] = sorted(m.id for m in client.models.list())

# Chat, not streamed, at temperature 0.
question = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
r = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=24)
out["chat"] = {
    "content": r.choices[0].message.content,
    "role": r.choices[0].message.role,
    "finish_reason": r.choices[0].finish_reason,
    "usage": [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens],
    "object": r.object,
}

# The same, streamed: the pieces join to the same text.
pieces, finish, usage = [], None, None
stream = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=24,
                                        stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["stream"] = {"content": "".join(pieces), "chunks": len(pieces), "finish_reason": finish, "usage": usage}

# A length-limited answer says so; stop sequences are honoured.
r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Count from 1 to 50."}],
                                   temperature=0, max_tokens=5)
out["length"] = {"finish_reason": r.choices[0].finish_reason, "completion_tokens": r.usage.completion_tokens}
r = client.completions.create(model="smollm2", prompt="The capital of France is", temperature=0, max_tokens=12,
                              stop=["."])
out["completion"] = {"text": r.choices[0].text, "finish_reason": r.choices[0].finish_reason}

# Log-probabilities: the model's, as llama.cpp reports them.
r = client.completions.create(model="smollm2", prompt="The capital of France is", temperature=0,
                              max_tokens=3, logprobs=5)
lp = r.choices[0].logprobs
out["completion_logprobs"] = {"tokens": lp.tokens, "first": lp.token_logprobs[0],
                              "top": lp.top_logprobs[0], "offsets": lp.text_offset}
c = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=8,
                                   logprobs=True, top_logprobs=3)
content = c.choices[0].logprobs.content
out["chat_logprobs"] = {"joined": "".join(t.token for t in content), "content": c.choices[0].message.content,
                        "first_is_top": content[0].logprob == content[0].top_logprobs[0].logprob,
                        "n_top": len(content[0].top_logprobs)}

# Embeddings (the client asks for base64 by default; float when told).
texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
e = client.embeddings.create(model="minilm", input=texts)
vecs = [d.embedding for d in e.data]
f = client.embeddings.create(model="minilm", input=texts[0], encoding_format="float")
def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
ref = {r["text"]: r["embedding"] for r in json.load(open(reference))["rows"]}
out["embeddings"] = {
    "count": len(vecs), "dims": len(vecs[0]),
    "near": cos(vecs[0], vecs[1]), "far": cos(vecs[0], vecs[2]),
    "vs_reference": min(cos(v, ref[t]) for v, t in zip(vecs, texts)),
    "float_vs_base64": cos(f.data[0].embedding, vecs[0]),
    "usage": e.usage.prompt_tokens,
}

# Errors in OpenAI's shape, as the client's exception types.
def error_of(call):
    try:
        call()
    except openai.APIStatusError as err:
        return {"status": err.status_code, "type": type(err).__name__,
                "message": (err.body or {}).get("message") if isinstance(err.body, dict) else str(err.body)}
    return None
bad = openai.OpenAI(base_url=base, api_key="not-the-token", max_retries=0)
out["errors"] = {
    "wrong_key": error_of(lambda: bad.chat.completions.create(model="smollm2", messages=question)),
    "unknown_model": error_of(lambda: client.chat.completions.create(model="nope", messages=question)),
    "bad_temperature": error_of(lambda: client.chat.completions.create(model="smollm2", messages=question,
                                                                       temperature=-1)),
    "embed_with_llm": error_of(lambda: client.embeddings.create(model="smollm2", input="x")),
}

# While a long generation streams, other requests (another model, the model list) are
# answered: the node is not blocked by it.
events = []
def long_chat():
    s = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Tell me a long story."}],
                                       temperature=0.7, seed=1, max_tokens=160, stream=True)
    n = 0
    for chunk in s:
        for c in chunk.choices:
            if c.delta.content:
                n += 1
                if n == 3:
                    events.append("long: started")
    events.append("long: done")
t = threading.Thread(target=long_chat)
t.start()
while "long: started" not in events and t.is_alive():
    threading.Event().wait(0.01)
client.embeddings.create(model="minilm", input="while the story is told")
client.models.list()
events.append("others: done")
t.join()
out["concurrency"] = events

# Structured output through the official client: JSON the schema describes.
schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"enum": ["France", "Italy"]}},
          "required": ["city", "country"], "additionalProperties": False}
r = client.chat.completions.create(
    model="smollm2", messages=[{"role": "user", "content": "Name the capital of France."}], temperature=0,
    max_tokens=40, response_format={"type": "json_schema",
                                    "json_schema": {"name": "place", "schema": schema, "strict": True}})
answer = json.loads(r.choices[0].message.content)
out["structured"] = {"keys": sorted(answer), "country": answer.get("country"),
                     "finish_reason": r.choices[0].finish_reason}
# Tool calls through the official client: a call parsed into tool_calls, its result sent
# back as a tool message, and the same call streamed as deltas.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]


def tool_calls(model):
    """A call asked of `model`, its result sent back, and the call streamed. The tokens the
    model wrote for the call (from its log-probabilities) show in which syntax it wrote it."""
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required",
                                       temperature=0, max_tokens=200, logprobs=True, top_logprobs=0)
    m = r.choices[0].message
    call = m.tool_calls[0]
    found = {"name": call.function.name, "args": json.loads(call.function.arguments),
             "finish_reason": r.choices[0].finish_reason, "id": call.id, "content": m.content,
             "calls": len(m.tool_calls), "ids_distinct": len({c.id for c in m.tool_calls}) == len(m.tool_calls),
             "written": "".join(t.token for t in r.choices[0].logprobs.content)}
    follow = ask + [m.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "18 degrees celsius, sunny"}]
    r = client.chat.completions.create(model=model, messages=follow, tools=tools, temperature=0, max_tokens=60)
    m = r.choices[0].message
    after = {"finish_reason": r.choices[0].finish_reason, "answered": bool(m.content) or bool(m.tool_calls)}
    name, args = None, ""
    for chunk in client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required",
                                                temperature=0, max_tokens=60, stream=True):
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                name = tc.function.name or name
                args += tc.function.arguments or ""
    return found, after, {"name": name, "args": json.loads(args) if args else None}


# SmolLM2's own template has no tool syntax: the JSON envelope. "smollm2-tools" is the same
# weights imported with Qwen 2.5's template (`--chat-template`): that template's syntax.
out["tool_call"], out["after_tool"], out["tool_stream"] = tool_calls("smollm2")
native = tool_calls("smollm2-tools")
out["native"] = {"tool_call": native[0], "after_tool": native[1], "tool_stream": native[2]}
print(json.dumps(out))
