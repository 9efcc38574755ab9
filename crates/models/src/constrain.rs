//! Constrained decoding: output that is JSON, or JSON a schema describes (OpenAI's
//! `response_format` `json_object` and `json_schema`).
//!
//! A [`Grammar`] is compiled from a JSON schema (or stands for "any JSON object"). A
//! [`Matcher`] follows the text generated so far, byte by byte, as a set of parser stacks
//! (a schema's `anyOf`, or alternatives sharing a prefix, keep several alive); a token is
//! allowed when its bytes keep at least one stack alive, and the end of generation only when
//! a stack has read one whole value. The decoder samples as usual and keeps the token if the
//! matcher allows it; otherwise it masks every token the matcher refuses and samples again
//! (llama.cpp's order too), so an unconstrained choice costs nothing extra.
//!
//! Supported: `type` (one or a list), `properties`, `required`, `additionalProperties`
//! (false, true or a schema), `items`, `minItems`, `maxItems`, `enum`, `const`, `anyOf`,
//! `oneOf` (as `anyOf`), `$ref` to `#/$defs/…` or `#/definitions/…` (recursion included).
//! Ignored, as they do not constrain: `description`, `title`, `$schema`, `default`,
//! `examples`, `strict`, `format`. Anything else that would constrain (`pattern`,
//! `minimum`, …) is refused with its name, never silently dropped.

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;

use crate::{Error, Result};

/// Whitespace bytes allowed in a row between tokens of JSON (a model must not loop on it).
const MAX_WS: u8 = 16;
/// Whitespace bytes allowed after the whole value: one line break ends it; more would only
/// let a model run on in blank lines until its token limit.
const MAX_TRAILING_WS: u8 = 1;
/// Most properties one object schema may declare (the matcher keeps them in a bit set).
pub const MAX_PROPERTIES: usize = 64;
/// Most nodes a compiled schema may have.
const MAX_NODES: usize = 4096;
/// Longest number, in bytes.
const MAX_NUMBER: u8 = 32;
/// Most parser stacks the matcher follows at once.
const MAX_STATES: usize = 256;
/// Most alternatives nested in one another that a value's first byte is tried against.
const MAX_ALTERNATIVE_DEPTH: u32 = 64;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Any JSON value.
    Any,
    Object {
        /// (the key as JSON, quotes included; its schema)
        props: Vec<(Vec<u8>, u32)>,
        required: u64,
        /// The schema of keys not declared (`None`: no other keys).
        additional: Option<u32>,
    },
    Array {
        items: u32,
        min: u32,
        max: Option<u32>,
    },
    String,
    Number {
        integer: bool,
    },
    /// One of these JSON texts exactly (booleans, null, `enum`, `const`).
    Literals(Vec<Vec<u8>>),
    AnyOf(Vec<u32>),
    /// A `$ref` not compiled yet (replaced before the grammar is used).
    Ref(String),
}

/// A compiled constraint.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    nodes: Vec<Node>,
    root: u32,
    /// `true`, `false`, `null`: the literals of [`Node::Any`].
    any_literals: u32,
    /// An object of any keys and values (what [`Node::Any`] opens with `{`).
    any_object: u32,
    /// Literal text before the value (a template's tool syntax: `<tool_call>\n`).
    before: Vec<u8>,
    /// Literal text after it (`\n</tool_call>`).
    after: Vec<u8>,
    /// Whether text that departs from `before` is free (the model answers in words).
    or_words: bool,
    /// Whether another framed value may follow `after` (several tool calls in one answer).
    repeat: bool,
}

impl Grammar {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    pub fn json_object() -> Self {
        let mut g = Grammar {
            nodes: vec![Node::Any],
            root: 0,
            any_literals: 0,
            any_object: 0,
            before: Vec::new(),
            after: Vec::new(),
            or_words: false,
            repeat: false,
        };
        g.any_literals = g.push(Node::Literals(vec![
            b"true".to_vec(),
            b"false".to_vec(),
            b"null".to_vec(),
        ]));
        g.any_object = g.push(Node::Object {
            props: Vec::new(),
            required: 0,
            additional: Some(0),
        });
        g.root = g.any_object;
        g
    }

    /// JSON that `schema` describes (`response_format: {"type": "json_schema", …}`). A schema
    /// this module cannot honour is refused ([`Error::Input`]) with the reason.
    pub fn from_schema(schema: &Value) -> Result<Self> {
        let mut g = Grammar::json_object();
        let mut c = Compiler {
            defs: HashMap::new(),
            doc: schema,
        };
        g.root = c.compile(&mut g, schema, "")?;
        // Resolve references (each to its definition, compiled once).
        let mut i = 0;
        while i < g.nodes.len() {
            if let Node::Ref(r) = &g.nodes[i] {
                let r = r.clone();
                let target = c.resolve(&mut g, &r)?;
                g.nodes[i] = Node::AnyOf(vec![target]);
            }
            i += 1;
            if g.nodes.len() > MAX_NODES {
                return Err(Error::Input("the schema is too large".into()));
            }
        }
        Ok(g)
    }

    /// The value between literal texts: `before`, the value, `after` (a template's tool
    /// syntax). With `or_words`, output that departs from `before` is free text, an answer in
    /// words instead (the output may also be empty); output that follows `before` whole
    /// is held to the value and `after`.
    ///
    /// Without `before`, with `or_words`: output whose first byte can open the value is the
    /// value, any other is words.
    pub fn framed(mut self, before: &str, after: &str, or_words: bool) -> Self {
        self.before = before.as_bytes().to_vec();
        self.after = after.as_bytes().to_vec();
        self.or_words = or_words;
        self
    }

    /// After a framed value's `after`, another may follow (a line break between them
    /// allowed): `before`, a value, `after`, as many times as the output has room for.
    pub fn repeated(mut self) -> Self {
        self.repeat = !self.before.is_empty();
        self
    }

    fn push(&mut self, n: Node) -> u32 {
        self.nodes.push(n);
        (self.nodes.len() - 1) as u32
    }
}

struct Compiler<'a> {
    defs: HashMap<String, u32>,
    doc: &'a Value,
}

fn bad(path: &str, why: impl std::fmt::Display) -> Error {
    let at = if path.is_empty() { "the schema" } else { path };
    Error::Input(format!("{at}: {why}"))
}

impl Compiler<'_> {
    fn resolve(&mut self, g: &mut Grammar, r: &str) -> Result<u32> {
        if let Some(&n) = self.defs.get(r) {
            return Ok(n);
        }
        let name = r
            .strip_prefix("#/$defs/")
            .or_else(|| r.strip_prefix("#/definitions/"))
            .ok_or_else(|| {
                bad(
                    r,
                    "only references to #/$defs/… or #/definitions/… are supported",
                )
            })?;
        let doc = self.doc;
        let target = doc
            .get("$defs")
            .and_then(|d| d.get(name))
            .or_else(|| doc.get("definitions").and_then(|d| d.get(name)))
            .ok_or_else(|| bad(r, "no such definition"))?;
        // Reserve the slot first, so a definition that refers to itself ends.
        let slot = g.push(Node::Any);
        self.defs.insert(r.to_owned(), slot);
        let n = self.compile(g, target, r)?;
        g.nodes[slot as usize] = Node::AnyOf(vec![n]);
        Ok(slot)
    }

    fn compile(&mut self, g: &mut Grammar, s: &Value, path: &str) -> Result<u32> {
        if g.nodes.len() > MAX_NODES {
            return Err(bad(path, "the schema is too large"));
        }
        let obj = match s {
            Value::Bool(true) => return Ok(0),
            Value::Object(o) => o,
            _ => return Err(bad(path, "a schema is an object")),
        };
        for k in obj.keys() {
            let known = [
                "type",
                "properties",
                "required",
                "additionalProperties",
                "items",
                "minItems",
                "maxItems",
                "enum",
                "const",
                "anyOf",
                "oneOf",
                "$ref",
                "$defs",
                "definitions",
                "description",
                "title",
                "$schema",
                "default",
                "examples",
                "strict",
                "format",
            ];
            if !known.contains(&k.as_str()) {
                return Err(bad(
                    path,
                    format!("{} is not supported in a response format", sov_quote(k)),
                ));
            }
        }
        if let Some(r) = obj.get("$ref") {
            let r = r.as_str().ok_or_else(|| bad(path, "$ref is a string"))?;
            return Ok(g.push(Node::Ref(r.to_owned())));
        }
        if let Some(v) = obj.get("const") {
            return Ok(g.push(Node::Literals(vec![json_bytes(v)])));
        }
        if let Some(v) = obj.get("enum") {
            let list = v
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad(path, "enum is a list of values"))?;
            return Ok(g.push(Node::Literals(list.iter().map(json_bytes).collect())));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(v) = obj.get(key) {
                let list = v
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad(path, format!("{key} is a list of schemas")))?;
                let mut alts = Vec::new();
                for (i, sub) in list.iter().enumerate() {
                    alts.push(self.compile(g, sub, &format!("{path}/{key}/{i}"))?);
                }
                return Ok(g.push(Node::AnyOf(alts)));
            }
        }
        let types: Vec<&str> = match obj.get("type") {
            None => return Ok(0),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or_else(|| bad(path, "type names are strings"))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad(path, "type is a name or a list of names")),
        };
        let mut alts = Vec::new();
        for t in types {
            let n = match t {
                "object" => self.object(g, obj, path)?,
                "array" => {
                    let items = match obj.get("items") {
                        None => 0,
                        Some(i) => self.compile(g, i, &format!("{path}/items"))?,
                    };
                    let num = |k: &str| -> Result<Option<u32>> {
                        obj.get(k)
                            .map(|v| {
                                v.as_u64()
                                    .and_then(|n| u32::try_from(n).ok())
                                    .ok_or_else(|| bad(path, format!("{k} is a whole number")))
                            })
                            .transpose()
                    };
                    let (min, max) = (num("minItems")?.unwrap_or(0), num("maxItems")?);
                    if max.is_some_and(|m| m < min) {
                        return Err(bad(path, "maxItems is below minItems"));
                    }
                    g.push(Node::Array { items, min, max })
                }
                "string" => g.push(Node::String),
                "number" => g.push(Node::Number { integer: false }),
                "integer" => g.push(Node::Number { integer: true }),
                "boolean" => g.push(Node::Literals(vec![b"true".to_vec(), b"false".to_vec()])),
                "null" => g.push(Node::Literals(vec![b"null".to_vec()])),
                other => return Err(bad(path, format!("unknown type {}", sov_quote(other)))),
            };
            alts.push(n);
        }
        Ok(if alts.len() == 1 {
            alts[0]
        } else {
            g.push(Node::AnyOf(alts))
        })
    }

    fn object(
        &mut self,
        g: &mut Grammar,
        obj: &serde_json::Map<String, Value>,
        path: &str,
    ) -> Result<u32> {
        let mut props = Vec::new();
        if let Some(p) = obj.get("properties") {
            let p = p
                .as_object()
                .ok_or_else(|| bad(path, "properties is an object"))?;
            if p.len() > MAX_PROPERTIES {
                return Err(bad(
                    path,
                    format!("at most {MAX_PROPERTIES} properties per object"),
                ));
            }
            for (k, v) in p {
                let n = self.compile(g, v, &format!("{path}/properties/{k}"))?;
                props.push((json_bytes(&Value::String(k.clone())), n));
            }
        }
        let mut required = 0u64;
        if let Some(r) = obj.get("required") {
            let r = r
                .as_array()
                .ok_or_else(|| bad(path, "required is a list of names"))?;
            for name in r {
                let name = name
                    .as_str()
                    .ok_or_else(|| bad(path, "required is a list of names"))?;
                let key = json_bytes(&Value::String(name.to_owned()));
                let i = props.iter().position(|(k, _)| *k == key).ok_or_else(|| {
                    bad(
                        path,
                        format!("{} is required but not a property", sov_quote(name)),
                    )
                })?;
                required |= 1 << i;
            }
        }
        let additional = match obj.get("additionalProperties") {
            None | Some(Value::Bool(true)) => {
                // Strict schemas say false; without a word, any other key may come (a
                // schema without properties is a free object).
                if props.is_empty() { Some(0) } else { None }
            }
            Some(Value::Bool(false)) => None,
            Some(s) => Some(self.compile(g, s, &format!("{path}/additionalProperties"))?),
        };
        Ok(g.push(Node::Object {
            props,
            required,
            additional,
        }))
    }
}

fn sov_quote(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    format!("{short:?}")
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ObjSt {
    /// After `{`: a key or `}`.
    Open,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or `}`.
    After,
    /// After `,`: a key.
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Frame {
    /// The bottom: one value, then only whitespace (or the grammar's `after` text).
    Root { done: bool, ws: u8 },
    /// Inside the grammar's `before` text, `pos` bytes matched (above the root's value);
    /// `first`: of the first value (only there may the output turn to words).
    Before { pos: u32, first: bool },
    /// Inside its `after` text, `pos` bytes matched (the whole stack); past its end, the
    /// whitespace read after it.
    After { pos: u32 },
    /// Free text: the output departed from `before` (the whole stack).
    Words,
    /// Before the first byte of a value that may instead be words (no `before` text), `ws`
    /// whitespace bytes read: the first other byte opens the value if it can, else starts
    /// words (above the root's value).
    Gate { ws: u8 },
    /// A value of `node` is next (leading whitespace allowed).
    Value { node: u32, ws: u8 },
    /// Inside literal `alt` of `node`, `pos` bytes matched.
    Lit { node: u32, alt: u32, pos: u32 },
    /// Inside a key literal: property `prop` of object `node`.
    Key { node: u32, prop: u32, pos: u32 },
    /// Inside a string, after its opening quote; `esc`: 0 none, 1 after `\`, 2–5 hex
    /// digits of `\u` left + 1.
    Str { key: bool, esc: u8 },
    /// A number; `st` its state, `len` its bytes.
    Num { integer: bool, st: u8, len: u8 },
    /// An object of schema `node`: `seen` properties, the key now read (`u32::MAX`: one
    /// not declared).
    Obj {
        node: u32,
        st: ObjSt,
        seen: u64,
        key: u32,
        ws: u8,
    },
    /// An array of schema `node`, `count` items so far; `open`: nothing read yet after `[`,
    /// `comma`: after `,`.
    Arr {
        node: u32,
        count: u32,
        open: bool,
        ws: u8,
    },
}

type Stack = Vec<Frame>;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Number states: 0 start, 1 after `-`, 2 after a leading `0`, 3 digits, 4 after `.`,
/// 5 fraction digits, 6 after `e`, 7 after the exponent's sign, 8 exponent digits.
fn num_step(integer: bool, st: u8, b: u8) -> Option<u8> {
    let digit = b.is_ascii_digit();
    match (st, b) {
        (0, b'-') => Some(1),
        (0 | 1, b'0') => Some(2),
        (0 | 1, _) if digit => Some(3),
        (3, _) if digit => Some(3),
        (2 | 3, b'.') if !integer => Some(4),
        (2 | 3 | 5, b'e' | b'E') if !integer => Some(6),
        (4 | 5, _) if digit => Some(5),
        (6, b'+' | b'-') => Some(7),
        (6..=8, _) if digit => Some(8),
        _ => None,
    }
}

fn num_accepting(st: u8) -> bool {
    matches!(st, 2 | 3 | 5 | 8)
}

impl Grammar {
    fn node(&self, n: u32) -> &Node {
        &self.nodes[n as usize]
    }

    /// The stacks that follow from starting a value of `node` with byte `b` on `stack`
    /// (whose top, a `Value`, was popped).
    fn start(&self, stack: &Stack, node: u32, b: u8, out: &mut Vec<Stack>) {
        self.start_at(stack, node, b, out, 0);
    }

    /// [`Grammar::start`], `depth` alternatives deep (a schema whose alternatives lead back
    /// to themselves without reading anything, `{"$ref": "#/$defs/a"}` defined as itself,
    /// ends here instead of recursing for ever).
    fn start_at(&self, stack: &Stack, node: u32, b: u8, out: &mut Vec<Stack>, depth: u32) {
        if depth > MAX_ALTERNATIVE_DEPTH {
            return;
        }
        let push = |f: Frame, out: &mut Vec<Stack>| {
            let mut s = stack.clone();
            s.push(f);
            out.push(s);
        };
        match self.node(node) {
            Node::Any => match b {
                b'{' => push(
                    Frame::Obj {
                        node: self.any_object(),
                        st: ObjSt::Open,
                        seen: 0,
                        key: 0,
                        ws: 0,
                    },
                    out,
                ),
                b'[' => push(
                    Frame::Arr {
                        node: self.any_array(),
                        count: 0,
                        open: true,
                        ws: 0,
                    },
                    out,
                ),
                b'"' => push(Frame::Str { key: false, esc: 0 }, out),
                b'-' | b'0'..=b'9' => {
                    if let Some(st) = num_step(false, 0, b) {
                        push(
                            Frame::Num {
                                integer: false,
                                st,
                                len: 1,
                            },
                            out,
                        )
                    }
                }
                _ => self.start_at(stack, self.any_literals, b, out, depth + 1),
            },
            Node::Object { .. } if b == b'{' => push(
                Frame::Obj {
                    node,
                    st: ObjSt::Open,
                    seen: 0,
                    key: 0,
                    ws: 0,
                },
                out,
            ),
            Node::Array { .. } if b == b'[' => push(
                Frame::Arr {
                    node,
                    count: 0,
                    open: true,
                    ws: 0,
                },
                out,
            ),
            Node::String if b == b'"' => push(Frame::Str { key: false, esc: 0 }, out),
            Node::Number { integer } => {
                if let Some(st) = num_step(*integer, 0, b) {
                    push(
                        Frame::Num {
                            integer: *integer,
                            st,
                            len: 1,
                        },
                        out,
                    )
                }
            }
            Node::Literals(alts) => {
                for (i, a) in alts.iter().enumerate() {
                    if a.first() == Some(&b) {
                        let mut s = stack.clone();
                        if a.len() == 1 {
                            self.complete(&mut s, None, out);
                        } else {
                            s.push(Frame::Lit {
                                node,
                                alt: i as u32,
                                pos: 1,
                            });
                            out.push(s);
                        }
                    }
                }
            }
            Node::AnyOf(alts) => {
                for &a in alts {
                    self.start_at(stack, a, b, out, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn any_object(&self) -> u32 {
        self.any_object
    }

    /// The array of anything: no node, a mark [`Grammar::arr`] knows.
    fn any_array(&self) -> u32 {
        u32::MAX
    }

    /// A value on top of `stack` just ended (popped already, `child` it if a frame):
    /// tell the parent. The results go to `out`.
    fn complete(&self, stack: &mut Stack, child: Option<Frame>, out: &mut Vec<Stack>) {
        let Some(top) = stack.last_mut() else {
            return;
        };
        match top {
            Frame::Root { done, .. } => *done = true,
            Frame::Obj { st, key, seen, .. } => match child {
                Some(Frame::Key { prop, .. }) => {
                    *key = prop;
                    *st = ObjSt::Colon;
                }
                Some(Frame::Str { key: true, .. }) => {
                    *key = u32::MAX;
                    *st = ObjSt::Colon;
                }
                _ => {
                    if *key != u32::MAX {
                        *seen |= 1 << *key;
                    }
                    *st = ObjSt::After;
                }
            },
            Frame::Arr { count, open, .. } => {
                *count += 1;
                *open = false;
            }
            _ => return,
        }
        out.push(stack.clone());
    }

    /// The stacks that follow from `stack` reading byte `b`.
    fn step(&self, mut stack: Stack, b: u8, out: &mut Vec<Stack>) {
        let Some(top) = stack.pop() else { return };
        match top {
            Frame::Root { done, ws } => {
                if done && self.after.first() == Some(&b) {
                    out.push(vec![Frame::After { pos: 1 }]);
                }
                if done && is_ws(b) && ws < MAX_TRAILING_WS {
                    stack.push(Frame::Root { done, ws: ws + 1 });
                    out.push(stack);
                }
            }
            Frame::Before { pos, first } => {
                if self.before.get(pos as usize) == Some(&b) {
                    if pos as usize + 1 < self.before.len() {
                        stack.push(Frame::Before {
                            pos: pos + 1,
                            first,
                        });
                    }
                    out.push(stack);
                } else if self.or_words && first {
                    out.push(vec![Frame::Words]);
                }
            }
            Frame::After { pos } => {
                let end = self.after.len() as u32;
                if self.after.get(pos as usize) == Some(&b) {
                    out.push(vec![Frame::After { pos: pos + 1 }]);
                } else if self.repeat && pos >= end {
                    if is_ws(b) && pos < end + 2 {
                        out.push(vec![Frame::After { pos: pos + 1 }]);
                    } else if self.before.first() == Some(&b) {
                        // The next value opens.
                        let mut next = vec![
                            Frame::Root { done: false, ws: 0 },
                            Frame::Value {
                                node: self.root,
                                ws: 0,
                            },
                        ];
                        if self.before.len() > 1 {
                            next.push(Frame::Before {
                                pos: 1,
                                first: false,
                            });
                        }
                        out.push(next);
                    }
                }
            }
            Frame::Words => out.push(vec![Frame::Words]),
            Frame::Gate { ws } => {
                if is_ws(b) {
                    if ws < MAX_WS {
                        stack.push(Frame::Gate { ws: ws + 1 });
                        out.push(stack);
                    } else {
                        out.push(vec![Frame::Words]);
                    }
                    return;
                }
                let mut opened = Vec::new();
                self.step(stack, b, &mut opened);
                if opened.is_empty() {
                    out.push(vec![Frame::Words]);
                } else {
                    out.extend(opened);
                }
            }
            Frame::Value { node, ws } => {
                if is_ws(b) {
                    if ws < MAX_WS {
                        stack.push(Frame::Value { node, ws: ws + 1 });
                        out.push(stack);
                    }
                } else {
                    self.start(&stack, node, b, out);
                }
            }
            Frame::Lit { node, alt, pos } => {
                let Node::Literals(alts) = self.node(node) else {
                    return;
                };
                let text = &alts[alt as usize];
                if text.get(pos as usize) == Some(&b) {
                    if pos as usize + 1 == text.len() {
                        self.complete(&mut stack, Some(top), out);
                    } else {
                        stack.push(Frame::Lit {
                            node,
                            alt,
                            pos: pos + 1,
                        });
                        out.push(stack);
                    }
                }
            }
            Frame::Key { node, prop, pos } => {
                let Node::Object { props, .. } = self.node(node) else {
                    return;
                };
                let text = &props[prop as usize].0;
                if text.get(pos as usize) == Some(&b) {
                    if pos as usize + 1 == text.len() {
                        self.complete(&mut stack, Some(top), out);
                    } else {
                        stack.push(Frame::Key {
                            node,
                            prop,
                            pos: pos + 1,
                        });
                        out.push(stack);
                    }
                }
            }
            Frame::Str { key, esc } => {
                let next = match esc {
                    0 => match b {
                        b'"' => {
                            self.complete(&mut stack, Some(top), out);
                            return;
                        }
                        b'\\' => 1,
                        0..=0x1f => return,
                        _ => 0,
                    },
                    1 => match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 0,
                        b'u' => 5,
                        _ => return,
                    },
                    _ if b.is_ascii_hexdigit() => {
                        if esc == 2 {
                            0
                        } else {
                            esc - 1
                        }
                    }
                    _ => return,
                };
                stack.push(Frame::Str { key, esc: next });
                out.push(stack);
            }
            Frame::Num { integer, st, len } => match num_step(integer, st, b) {
                Some(st) if len < MAX_NUMBER => {
                    stack.push(Frame::Num {
                        integer,
                        st,
                        len: len + 1,
                    });
                    out.push(stack);
                }
                Some(_) => {}
                None if num_accepting(st) => {
                    // The number ended at the byte before: the parent reads this one.
                    let mut done = Vec::new();
                    self.complete(&mut stack, Some(top), &mut done);
                    for s in done {
                        self.step(s, b, out);
                    }
                }
                None => {}
            },
            Frame::Obj {
                node,
                st,
                seen,
                key,
                ws,
            } => {
                let Node::Object {
                    props,
                    required,
                    additional,
                } = self.obj(node)
                else {
                    return;
                };
                if is_ws(b) {
                    if ws < MAX_WS {
                        stack.push(Frame::Obj {
                            node,
                            st,
                            seen,
                            key,
                            ws: ws + 1,
                        });
                        out.push(stack);
                    }
                    return;
                }
                let frame = |st, key| Frame::Obj {
                    node,
                    st,
                    seen,
                    key,
                    ws: 0,
                };
                let unseen = (0..props.len() as u32).filter(|i| seen & (1 << i) == 0);
                match (st, b) {
                    (ObjSt::Open | ObjSt::After, b'}') if seen & *required == *required => {
                        self.complete(&mut stack, Some(top), out);
                    }
                    (ObjSt::Open | ObjSt::Comma, b'"') => {
                        stack.push(frame(st, key));
                        for i in unseen {
                            let mut s = stack.clone();
                            if props[i as usize].0.len() > 1 {
                                s.push(Frame::Key {
                                    node,
                                    prop: i,
                                    pos: 1,
                                });
                                out.push(s);
                            }
                        }
                        if additional.is_some() {
                            stack.push(Frame::Str { key: true, esc: 0 });
                            out.push(stack);
                        }
                    }
                    (ObjSt::Colon, b':') => {
                        let value = if key == u32::MAX {
                            additional.unwrap_or(0)
                        } else {
                            props[key as usize].1
                        };
                        stack.push(frame(ObjSt::After, key));
                        stack.push(Frame::Value { node: value, ws: 0 });
                        out.push(stack);
                    }
                    (ObjSt::After, b',')
                        if additional.is_some() || unseen.clone().next().is_some() =>
                    {
                        stack.push(frame(ObjSt::Comma, key));
                        out.push(stack);
                    }
                    _ => {}
                }
            }
            Frame::Arr {
                node,
                count,
                open,
                ws,
            } => {
                let (items, min, max) = match self.arr(node) {
                    Some(a) => a,
                    None => return,
                };
                if is_ws(b) {
                    if ws < MAX_WS {
                        stack.push(Frame::Arr {
                            node,
                            count,
                            open,
                            ws: ws + 1,
                        });
                        out.push(stack);
                    }
                    return;
                }
                let more = max.is_none_or(|m| count < m);
                match b {
                    b']' if count >= min => self.complete(&mut stack, Some(top), out),
                    b',' if !open && more => {
                        stack.push(Frame::Arr {
                            node,
                            count,
                            open: false,
                            ws: 0,
                        });
                        stack.push(Frame::Value { node: items, ws: 0 });
                        out.push(stack);
                    }
                    _ if open && more => {
                        stack.push(Frame::Arr {
                            node,
                            count,
                            open: false,
                            ws: 0,
                        });
                        self.start(&stack, items, b, out);
                    }
                    _ => {}
                }
            }
        }
    }

    fn obj(&self, node: u32) -> &Node {
        self.node(node)
    }

    /// (items, minItems, maxItems) of array `node` (`u32::MAX`: an array of anything).
    fn arr(&self, node: u32) -> Option<(u32, u32, Option<u32>)> {
        if node == u32::MAX {
            return Some((0, 0, None));
        }
        match self.node(node) {
            Node::Array { items, min, max } => Some((*items, *min, *max)),
            _ => None,
        }
    }
}

/// Follows generated text against a [`Grammar`].
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    states: Vec<Stack>,
}

impl Matcher {
    /// At the start of the output.
    pub fn new(grammar: Arc<Grammar>) -> Self {
        let root = grammar.root;
        let mut start = vec![
            Frame::Root { done: false, ws: 0 },
            Frame::Value { node: root, ws: 0 },
        ];
        if !grammar.before.is_empty() {
            start.push(Frame::Before {
                pos: 0,
                first: true,
            });
        } else if grammar.or_words {
            start.push(Frame::Gate { ws: 0 });
        }
        Matcher {
            grammar,
            states: vec![start],
        }
    }

    fn feed(&self, states: &[Stack], bytes: &[u8]) -> Vec<Stack> {
        let mut cur: Vec<Stack> = states.to_vec();
        for &b in bytes {
            let mut next = Vec::new();
            for s in cur {
                self.grammar.step(s, b, &mut next);
            }
            next.sort_unstable();
            next.dedup();
            next.truncate(MAX_STATES);
            if next.is_empty() {
                return next;
            }
            cur = next;
        }
        cur
    }

    /// Whether `bytes` may come next.
    pub fn allows(&self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && !self.feed(&self.states, bytes).is_empty()
    }

    /// The bytes that may come next, as a set (for masking a vocabulary quickly).
    pub fn first_bytes(&self) -> [bool; 256] {
        let mut ok = [false; 256];
        for (b, slot) in ok.iter_mut().enumerate() {
            *slot = !self.feed(&self.states, &[b as u8]).is_empty();
        }
        ok
    }

    /// Take `bytes` as generated. Returns `false` (and changes nothing) if they are not
    /// allowed.
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        let next = self.feed(&self.states, bytes);
        if next.is_empty() {
            return false;
        }
        self.states = next;
        true
    }

    /// Whether the text so far is one whole value, with the text around it if the grammar
    /// has some (the generation may end here).
    pub fn can_end(&self) -> bool {
        let g = &self.grammar;
        self.states.iter().any(|s| match s.as_slice() {
            [Frame::Root { done: true, .. }] => g.after.is_empty(),
            [Frame::Root { done: false, .. }, Frame::Num { st, .. }] => {
                g.after.is_empty() && num_accepting(*st)
            }
            [Frame::After { pos }] => *pos as usize >= g.after.len(),
            [Frame::Words] => true,
            [_, _, Frame::Before { pos: 0, .. } | Frame::Gate { .. }] => g.or_words,
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn whole(g: &Grammar, text: &str) -> bool {
        let mut m = Matcher::new(Arc::new(g.clone()));
        m.advance(text.as_bytes()) && m.can_end()
    }

    fn prefix(g: &Grammar, text: &str) -> bool {
        Matcher::new(Arc::new(g.clone())).allows(text.as_bytes())
    }

    #[test]
    fn json_object_takes_objects_only_and_knows_when_they_end() {
        let g = Grammar::json_object();
        for ok in [
            "{}",
            "{\"a\": 1}",
            "{ \"a\" : [1, 2.5e3, -0.1, \"x\\n\\u00e9\", true, null, {\"b\": {}}] }",
            "{\"é\": \"ü\"}",
        ] {
            assert!(whole(&g, ok), "{ok}");
        }
        for no in [
            "[]",
            "1",
            "\"a\"",
            "{\"a\"}",
            "{\"a\": 01}",
            "{\"a\": tru}",
            "{,}",
        ] {
            assert!(!whole(&g, no), "{no}");
        }
        assert!(prefix(&g, "{\"a\": [1, "));
        assert!(!prefix(&g, "x"));
        assert!(!prefix(&g, "{\"a\": 1}}"));
        // Whitespace is bounded.
        assert!(!prefix(&g, &format!("{{{}", " ".repeat(40))));
    }

    #[test]
    fn a_schema_holds_its_properties_types_and_required_keys() {
        let schema: Value = serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["red", "reed", "blue"]}, "maxItems": 2},
                "pet": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pet"}]}
            },
            "required": ["name", "age"],
            "additionalProperties": false,
            "$defs": {"pet": {"type": "object", "properties": {"kind": {"const": "cat"}}, "required": ["kind"]}}
        });
        let g = Grammar::from_schema(&schema).unwrap();
        for ok in [
            r#"{"name": "Ada", "age": 36}"#,
            r#"{"age": 36, "name": "Ada", "tags": ["reed", "red"]}"#,
            r#"{"name": "A", "age": -1, "pet": null}"#,
            r#"{"name": "A", "age": 0, "pet": {"kind": "cat"}}"#,
        ] {
            assert!(whole(&g, ok), "{ok}");
        }
        for no in [
            r#"{"name": "Ada"}"#,
            r#"{"name": "Ada", "age": 3.5}"#,
            r#"{"name": "Ada", "age": 3, "extra": 1}"#,
            r#"{"name": "Ada", "age": 3, "tags": ["green"]}"#,
            r#"{"name": "Ada", "age": 3, "tags": ["red", "red", "red"]}"#,
            r#"{"name": "Ada", "name": "B", "age": 3}"#,
            r#"{"name": 1, "age": 3}"#,
            r#"{"name": "A", "age": 0, "pet": {"kind": "dog"}}"#,
        ] {
            assert!(!whole(&g, no), "{no}");
        }
        // The moment a key goes wrong, it is refused.
        assert!(!prefix(&g, r#"{"nam "#));
        assert!(prefix(&g, r#"{"na"#));
    }

    #[test]
    fn schemas_it_cannot_honour_are_refused_by_name() {
        for (s, why) in [
            (
                serde_json::json!({"type": "string", "pattern": "^a$"}),
                "pattern",
            ),
            (serde_json::json!({"type": "wat"}), "unknown type"),
            (
                serde_json::json!({"$ref": "#/$defs/none"}),
                "no such definition",
            ),
            (
                serde_json::json!({"type": "object", "properties": {}, "required": ["x"]}),
                "not a property",
            ),
        ] {
            let e = Grammar::from_schema(&s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
        // A definition that is only itself matches nothing, and does not recurse for ever.
        let loop_ = serde_json::json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}});
        let g = Grammar::from_schema(&loop_).unwrap();
        assert!(!prefix(&g, "{"));
        // A recursive schema compiles and holds.
        let tree = serde_json::json!({
            "$ref": "#/$defs/node",
            "$defs": {"node": {"type": "object", "properties": {
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["kids"],
                "additionalProperties": false}}
        });
        let g = Grammar::from_schema(&tree).unwrap();
        assert!(whole(
            &g,
            r#"{"kids": [{"kids": []}, {"kids": [{"kids": []}]}]}"#
        ));
        assert!(!whole(&g, r#"{"kids": [{}]}"#));
    }

    #[test]
    fn a_framed_value_holds_its_text_around_it_or_gives_way_to_words() {
        let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}},
            "required": ["n"], "additionalProperties": false});
        let call = Grammar::from_schema(&schema).unwrap();
        let g = call
            .clone()
            .framed("<tool_call>\n", "\n</tool_call>", false);
        assert!(whole(&g, "<tool_call>\n{\"n\": 1}\n</tool_call>"));
        // Whitespace before the value and between it and the closing text is allowed.
        assert!(whole(&g, "<tool_call>\n {\"n\": 1} \n</tool_call>"));
        for no in [
            "{\"n\": 1}",
            "<tool_call>\n{\"n\": 1}",
            "<tool_call>\n{\"n\": 1}\n</tool_cal",
            "<tool_call>\n{\"n\": \"x\"}\n</tool_call>",
            "Sure: <tool_call>\n{\"n\": 1}\n</tool_call>",
            "<tool_call>\n{\"n\": 1}\n</tool_call>\nmore",
            "",
        ] {
            assert!(!whole(&g, no), "{no:?}");
        }
        // A number as the whole value ends where the closing text begins.
        let n = Grammar::from_schema(&serde_json::json!({"type": "integer"}))
            .unwrap()
            .framed("<", ">", false);
        assert!(whole(&n, "<12>"));
        assert!(!whole(&n, "<12"));
        // Or words: text that departs from the opening is free, text that follows it is held.
        let w = call.framed("<tool_call>\n", "\n</tool_call>", true);
        for ok in [
            "",
            "It is sunny.",
            "<tools are fine>",
            "<tool_call>\n{\"n\": 2}\n</tool_call>",
        ] {
            assert!(whole(&w, ok), "{ok:?}");
        }
        assert!(!prefix(&w, "<tool_call>\n{\"m\""));
        // Not an answer yet: neither words nor a call.
        assert!(!whole(&w, "<tool"));
        // Repeated: several framed values, a line break between them, never words after one.
        let many = Grammar::from_schema(&schema)
            .unwrap()
            .framed("<tool_call>\n", "\n</tool_call>", true)
            .repeated();
        let one = "<tool_call>\n{\"n\": 1}\n</tool_call>";
        for ok in [
            one.to_string(),
            format!("{one}\n{one}"),
            format!("{one}{one}\n"),
        ] {
            assert!(whole(&many, &ok), "{ok:?}");
        }
        for no in [
            format!("{one}\nand words"),
            format!("{one}\n<tools>"),
            format!("{one}\n<tool_call>\n{{\"n\": \"x\"}}\n</tool_call>"),
            format!("{one}\n<tool_call>\n"),
        ] {
            assert!(!whole(&many, &no), "{no:?}");
        }
        // No opening text: a first byte that can open the value opens it, any other is words.
        let gate = Grammar::from_schema(&schema).unwrap().framed("", "", true);
        for ok in [
            "",
            "{\"n\": 3}",
            "\n {\"n\": 3}",
            "Hello {\"n\": x}",
            "\n\nHello",
            " ",
        ] {
            assert!(whole(&gate, ok), "{ok:?}");
        }
        for no in ["{\"n\": \"x\"}", "{\"n\": 3", "{} hello", "\n{\"m\": 1}"] {
            assert!(!whole(&gate, no), "{no:?}");
        }
        assert!(!whole(&w, "<tool_call>\n{\"n\": 2}"));
        let mut m = Matcher::new(Arc::new(w));
        assert!(m.advance(b"<tool_call>\n"));
        assert!(!m.can_end());
        assert!(!m.allows(b"x"));
    }
}
