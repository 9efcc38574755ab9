//! Tokenisers from GGUF metadata, token-exact with llama.cpp on its own test vectors:
//!
//! - byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with llama.cpp's pre-tokenisers: GPT-2's
//!   pattern; `smollm` (also StarCoder, Refact, Command-R), which cuts every digit alone
//!   first; Llama 3's and Qwen2's patterns (with Llama 3's `ignore_merges`). Each pre-token's
//!   bytes are mapped to GPT-2's printable stand-ins and merged, lowest rank first.
//! - SentencePiece (`"llama"`): spaces as `▁`, a space put first, the highest-scoring
//!   adjacent pair merged first, byte tokens for characters the vocabulary lacks.
//!
//! Control and user-defined tokens can be matched whole ([`Tokenizer::encode_special`]), as
//! chat templates need; decoding leaves control tokens out.

use std::collections::HashMap;

use crate::{Error, Result, gguf::Gguf};

fn err(msg: impl Into<String>) -> Error {
    Error::Tensor(msg.into())
}

/// How text is cut before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's pattern: contractions, ` ?letters`, ` ?numbers`, ` ?other`, whitespace.
    Gpt2,
    /// SmolLM: every digit alone, then GPT-2's pattern on the rest (also StarCoder's,
    /// Refact's and Command-R's).
    SmolLm,
    /// Llama 3's pattern: case-insensitive contractions, a letter run with one leading
    /// non-letter, numbers in groups of up to three, punctuation with trailing newlines,
    /// newline runs, whitespace.
    Llama3,
    /// Qwen2's pattern: Llama 3's with every digit alone.
    Qwen2,
}

/// A byte-level BPE tokeniser.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    pre: PreTokenizer,
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
    /// Tokens matched as a whole in text given to [`Tokenizer::encode_special`], longest
    /// first (GGUF token types control and user-defined).
    special: Vec<(String, u32)>,
    /// Control tokens: never printed by [`Tokenizer::decode`].
    control: Vec<bool>,
    /// Tokens that end a generation.
    eog: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
    /// Set for SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`).
    spm: Option<Spm>,
}

/// What a SentencePiece vocabulary adds: a score per token (higher merges first), the
/// `<0xXX>` byte tokens for characters the vocabulary lacks, and whether a space goes
/// first.
#[derive(Debug, Clone)]
struct Spm {
    scores: Vec<f32>,
    byte_tokens: [Option<u32>; 256],
    /// Which ids are byte tokens (decoded to their byte).
    is_byte: Vec<bool>,
    add_space_prefix: bool,
}

/// GGUF `tokenizer.ggml.token_type` values.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Control-token texts that llama.cpp also treats as end of generation.
const EOG_TEXTS: [&str; 8] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
];

/// GPT-2's map from bytes to printable characters: printable Latin-1 bytes stand for
/// themselves, the others take code points from 256 up.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        map[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    map
}

impl Tokenizer {
    /// Build the tokeniser a GGUF file describes.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("no tokenizer.ggml.model"))?;
        if model != "gpt2" && model != "llama" {
            return Err(err(format!(
                "tokenizer model {model:?} is not supported yet (gpt2 and llama are)"
            )));
        }
        let spm = model == "llama";
        let pre = match g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
            _ if spm => PreTokenizer::Gpt2,
            Some("smollm") | Some("starcoder") | Some("refact") | Some("command-r") => {
                PreTokenizer::SmolLm
            }
            Some("llama3") | Some("llama-bpe") | Some("llama-v3") => PreTokenizer::Llama3,
            Some("qwen2") => PreTokenizer::Qwen2,
            Some("gpt-2") | Some("gpt2") | None => PreTokenizer::Gpt2,
            Some(other) => {
                return Err(err(format!(
                    "pre-tokeniser {other:?} is not supported yet (gpt-2, smollm, starcoder, refact, command-r, llama3, qwen2 are)"
                )));
            }
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            g.get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| err(format!("no {key}")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("{key} holds a value that is not a string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = if spm {
            Vec::new()
        } else {
            strings("tokenizer.ggml.merges")?
        };
        let mut t = Tokenizer::new(tokens, &merges, pre)?;
        if spm {
            let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                Some(a) if a.len() == t.tokens.len() => a
                    .iter()
                    .map(|v| v.as_f64().map(|f| f as f32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        err("tokenizer.ggml.scores holds a value that is not a number")
                    })?,
                Some(a) => {
                    return Err(err(format!(
                        "{} scores for {} tokens",
                        a.len(),
                        t.tokens.len()
                    )));
                }
                None => vec![0.0; t.tokens.len()],
            };
            t.spm = Some(Spm {
                scores,
                byte_tokens: std::array::from_fn(|b| t.token_id(&format!("<0x{b:02X}>"))),
                is_byte: vec![false; t.tokens.len()],
                add_space_prefix: g
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(true),
            });
        }
        if let Some(types) = g
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            if types.len() != t.tokens.len() {
                return Err(err(format!(
                    "{} token types for {} tokens",
                    types.len(),
                    t.tokens.len()
                )));
            }
            let types: Vec<i64> = types.iter().map(|v| v.as_i64().unwrap_or(1)).collect();
            t.set_token_types(&types);
        }
        let id = |key: &str| {
            g.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < t.tokens.len())
        };
        t.bos = id("tokenizer.ggml.bos_token_id");
        t.add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mut eog: Vec<u32> = ["eos", "eot", "eom"]
            .iter()
            .filter_map(|k| id(&format!("tokenizer.ggml.{k}_token_id")))
            .collect();
        for (i, tok) in t.tokens.iter().enumerate() {
            if t.control[i] && EOG_TEXTS.contains(&tok.as_str()) {
                eog.push(i as u32);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        t.eog = eog;
        Ok(t)
    }

    /// Mark tokens by their GGUF type: control and user-defined tokens are matched whole in
    /// [`Tokenizer::encode_special`]; control tokens are not printed by
    /// [`Tokenizer::decode`].
    pub fn set_token_types(&mut self, types: &[i64]) {
        if let Some(spm) = &mut self.spm {
            spm.is_byte = (0..self.tokens.len())
                .map(|i| types.get(i) == Some(&TYPE_BYTE))
                .collect();
        }
        self.control = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, _)| types.get(i) == Some(&TYPE_CONTROL))
            .collect();
        let mut special: Vec<(String, u32)> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !t.is_empty()
                    && matches!(
                        types.get(*i),
                        Some(&TYPE_CONTROL) | Some(&TYPE_USER_DEFINED)
                    )
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        special.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        self.special = special;
    }

    /// Tokens that end a generation (end of sequence, end of turn).
    pub fn eog(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends a generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The beginning-of-sequence token, if the model wants one put first.
    pub fn bos_to_add(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    /// The id of a token, by its text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Token ids of `text`, where special tokens written out (`<|im_start|>`) become their
    /// ids, as llama.cpp does with `parse_special`. Chat templates need this; text from a
    /// user that is not meant to hold control tokens goes through [`Tokenizer::encode`].
    pub fn encode_special(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut after_special = true;
        for (raw, special) in self.split_special(text) {
            if !raw.is_empty() {
                match &self.spm {
                    // SentencePiece puts a space first at the start and after each special
                    // token (when the model asks for one), as llama.cpp does.
                    Some(spm) => out.extend(self.spm_encode(spm, raw, after_special)),
                    None => out.extend(self.encode(raw)?),
                }
            }
            after_special = special.is_some();
            out.extend(special);
        }
        Ok(out)
    }

    /// Cut `text` at the special tokens written in it: (text before, the special token),
    /// the last piece without one. At each point the earliest special token wins; at one
    /// position, the longest.
    fn split_special<'a>(&self, text: &'a str) -> Vec<(&'a str, Option<u32>)> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .special
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match next {
                Some((at, len, id)) => {
                    out.push((&rest[..at], Some(id)));
                    rest = &rest[at + len..];
                }
                None => {
                    out.push((rest, None));
                    break;
                }
            }
        }
        out
    }

    /// The bytes token `id` stands for (empty for control tokens and unknown ids). A
    /// token may end inside a UTF-8 character; streaming callers join bytes before
    /// turning them into text.
    pub fn piece_bytes(&self, id: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.push_piece(id, &mut bytes);
        bytes
    }

    /// The text of `ids` with control tokens written out (`<|im_end|>`).
    pub fn decode_special(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if self.control.get(id as usize) == Some(&true) {
                bytes.extend(self.tokens[id as usize].as_bytes());
            } else {
                self.push_piece(id, &mut bytes);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn push_piece(&self, id: u32, bytes: &mut Vec<u8>) {
        if self.control.get(id as usize) == Some(&true) {
            return;
        }
        if let Some(spm) = &self.spm {
            let Some(t) = self.tokens.get(id as usize) else {
                return;
            };
            if spm.is_byte.get(id as usize) == Some(&true)
                && let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                bytes.push(b);
            } else {
                bytes.extend(t.replace('\u{2581}', " ").as_bytes());
            }
            return;
        }
        if let Some(t) = self.tokens.get(id as usize) {
            for c in t.chars() {
                match self.char_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend(c.to_string().as_bytes()),
                }
            }
        }
    }

    /// Build from a vocabulary (id = index) and merges (`"a b"`, rank = index).
    pub fn new(tokens: Vec<String>, merges: &[String], pre: PreTokenizer) -> Result<Self> {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| err(format!("merge {rank} ({m:?}) is not two pieces")))?;
            ranks.entry((a.to_string(), b.to_string())).or_insert(rank);
        }
        let byte_char = bytes_to_unicode();
        let char_byte = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let control = vec![false; tokens.len()];
        Ok(Tokenizer {
            tokens,
            ids,
            ranks,
            pre,
            byte_char,
            char_byte,
            special: Vec::new(),
            control,
            eog: Vec::new(),
            bos: None,
            add_bos: false,
            spm: None,
        })
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(spm) = &self.spm {
            return Ok(self.spm_encode(spm, text, true));
        }
        let mut out = Vec::new();
        for piece in self.pre_tokenize(text) {
            self.bpe(piece, &mut out)?;
        }
        Ok(out)
    }

    /// The text of `ids`, without control tokens (invalid UTF-8 across a cut is replaced by
    /// U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.push_piece(id, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// llama.cpp's SentencePiece encoder: spaces become `▁` (one put first if
    /// `first` and the model adds a space prefix); the text starts as UTF-8 characters and
    /// the adjacent pair that forms the highest-scoring vocabulary token is merged (the
    /// leftmost on ties) until none does; pieces outside the vocabulary are cut back along
    /// their merges, and what still is not a token becomes byte tokens.
    fn spm_encode(&self, spm: &Spm, text: &str, first: bool) -> Vec<u32> {
        // No text, no tokens (not even the space prefix), as llama.cpp.
        if text.is_empty() {
            return Vec::new();
        }
        let mut s = String::with_capacity(text.len() + 3);
        if first && spm.add_space_prefix {
            s.push(' ');
        }
        s.push_str(text);
        let s = s.replace(' ', "\u{2581}");
        if s.is_empty() {
            return Vec::new();
        }
        // Symbols: byte ranges of `s`, linked left and right.
        struct Sym {
            start: usize,
            len: usize,
            prev: Option<usize>,
            next: Option<usize>,
        }
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (at, c)) in s.char_indices().enumerate() {
            syms.push(Sym {
                start: at,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        // The queue: highest score first, then the leftmost.
        #[derive(PartialEq)]
        struct Bigram {
            score: f32,
            left: usize,
            right: usize,
            size: usize,
        }
        impl Eq for Bigram {}
        impl PartialOrd for Bigram {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Bigram {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
            }
        }
        let mut queue = std::collections::BinaryHeap::new();
        // A pair is queued only if together they are a token, so every merged symbol is
        // one (llama.cpp's `rev_merge` fallback never fires for them).
        let try_add = |l: Option<usize>,
                       r: Option<usize>,
                       syms: &[Sym],
                       queue: &mut std::collections::BinaryHeap<Bigram>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let size = syms[l].len + syms[r].len;
            let Some(&id) = self.ids.get(&s[syms[l].start..syms[l].start + size]) else {
                return;
            };
            queue.push(Bigram {
                score: spm.scores.get(id as usize).copied().unwrap_or(0.0),
                left: l,
                right: r,
                size,
            });
        };
        for i in 1..syms.len() {
            try_add(Some(i - 1), Some(i), &syms, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (b.left, b.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            let (p, n) = (syms[l].prev, syms[l].next);
            try_add(p, Some(l), &syms, &mut queue);
            try_add(Some(l), n, &syms, &mut queue);
        }
        let mut out = Vec::new();
        let mut i = Some(0);
        while let Some(k) = i {
            let text = &s[syms[k].start..syms[k].start + syms[k].len];
            match self.ids.get(text) {
                Some(&id) => out.push(id),
                // A character the vocabulary lacks: its UTF-8 bytes as byte tokens.
                None => out.extend(text.bytes().filter_map(|b| spm.byte_tokens[b as usize])),
            }
            i = syms[k].next;
        }
        out
    }

    fn bpe(&self, piece: &str, out: &mut Vec<u32>) -> Result<()> {
        // Llama 3's vocabulary is used with `ignore_merges`: a pre-token that is a token
        // as a whole is that token, even where the merges would not reach it.
        if self.pre == PreTokenizer::Llama3 {
            let mapped: String = piece.bytes().map(|b| self.byte_char[b as usize]).collect();
            if let Some(&id) = self.ids.get(&mapped) {
                out.push(id);
                return Ok(());
            }
        }
        let mut parts: Vec<String> = piece
            .bytes()
            .map(|b| self.byte_char[b as usize].to_string())
            .collect();
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", parts[i], parts[i + 1]);
            parts.splice(i..i + 2, [merged]);
        }
        for p in parts {
            let id = self
                .ids
                .get(&p)
                .ok_or_else(|| err(format!("piece {p:?} is not in the vocabulary")))?;
            out.push(*id);
        }
        Ok(())
    }

    fn pre_tokenize<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        match self.pre {
            PreTokenizer::Gpt2 => gpt2_split(text, &mut out),
            PreTokenizer::SmolLm => {
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
                        gpt2_split(&text[start..i], &mut out);
                        out.push(&text[i..i + c.len_utf8()]);
                        start = i + c.len_utf8();
                    }
                }
                gpt2_split(&text[start..], &mut out);
            }
            PreTokenizer::Llama3 => llama3_split(text, 3, &mut out),
            PreTokenizer::Qwen2 => llama3_split(text, 1, &mut out),
        }
        out
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Number
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// GPT-2's pattern, by hand:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn gpt2_split<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |k: usize| chars.get(k).map_or(text.len(), |&(i, _)| i);
    let mut k = 0;
    while k < chars.len() {
        let (start, c) = chars[k];
        // Contractions.
        if c == '\'' {
            let rest = &text[start + 1..];
            let n = ["re", "ve", "ll", "s", "t", "m", "d"]
                .iter()
                .find(|s| rest.starts_with(*s))
                .map(|s| s.len());
            if let Some(n) = n {
                out.push(&text[start..start + 1 + n]);
                k += 1 + n; // ASCII only
                continue;
            }
        }
        // ` ?X+` for letters, numbers, others.
        let first = if c == ' ' && k + 1 < chars.len() && class(chars[k + 1].1) != Class::Space {
            k + 1
        } else {
            k
        };
        let cls = class(chars[first].1);
        if cls != Class::Space {
            let mut j = first + 1;
            while j < chars.len() && class(chars[j].1) == cls {
                j += 1;
            }
            out.push(&text[start..end_of(j)]);
            k = j;
            continue;
        }
        // Whitespace: a run followed by non-space leaves its last character to the next
        // piece (`\s+(?!\S)`); a lone one before non-space stands alone (`\s+`).
        let mut j = k + 1;
        while j < chars.len() && class(chars[j].1) == Class::Space {
            j += 1;
        }
        if j < chars.len() && j - k >= 2 {
            j -= 1;
        }
        out.push(&text[start..end_of(j)]);
        k = j;
    }
}

/// Llama 3's pattern, by hand (`digits` is 3 for Llama 3, 1 for Qwen2):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,digits}|
/// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`. The alternatives are tried in
/// order at each position, as the regex does.
fn llama3_split<'a>(text: &'a str, digits: usize, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |k: usize| chars.get(k).map_or(text.len(), |&(i, _)| i);
    let is_nl = |c: char| c == '\r' || c == '\n';
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k].1;
        let at = |j: usize| chars.get(j).map(|&(_, c)| c);
        let run = |from: usize, f: &dyn Fn(char) -> bool| {
            let mut j = from;
            while at(j).is_some_and(f) {
                j += 1;
            }
            j
        };
        // Contractions, any case.
        if c == '\'' {
            let lower: String = chars[k + 1..chars.len().min(k + 3)]
                .iter()
                .map(|&(_, c)| c.to_ascii_lowercase())
                .collect();
            let n = ["re", "ve", "ll", "s", "t", "m", "d"]
                .iter()
                .find(|s| lower.starts_with(*s))
                .map(|s| s.len());
            if let Some(n) = n {
                out.push(&text[chars[k].0..end_of(k + 1 + n)]);
                k += 1 + n;
                continue;
            }
        }
        // An optional leading non-letter, non-digit, non-newline, then letters.
        let lead = !is_nl(c) && class(c) != Class::Letter && class(c) != Class::Number;
        if class(c) == Class::Letter
            || (lead && at(k + 1).is_some_and(|c| class(c) == Class::Letter))
        {
            let from = if class(c) == Class::Letter { k } else { k + 1 };
            let j = run(from, &|c| class(c) == Class::Letter);
            out.push(&text[chars[k].0..end_of(j)]);
            k = j;
            continue;
        }
        // Numbers, `digits` at a time.
        if class(c) == Class::Number {
            let mut j = k;
            while j < k + digits && at(j).is_some_and(|c| class(c) == Class::Number) {
                j += 1;
            }
            out.push(&text[chars[k].0..end_of(j)]);
            k = j;
            continue;
        }
        // ` ?` other characters, then newlines.
        let other = |c: char| class(c) == Class::Other;
        let from = if c == ' ' && at(k + 1).is_some_and(other) {
            k + 1
        } else {
            k
        };
        if at(from).is_some_and(other) {
            let j = run(from, &other);
            let j = run(j, &is_nl);
            out.push(&text[chars[k].0..end_of(j)]);
            k = j;
            continue;
        }
        // Whitespace: up to the last newline of the run, if it has one.
        let ws_end = run(k, &|c| class(c) == Class::Space);
        if let Some(last_nl) = (k..ws_end).rev().find(|&j| is_nl(chars[j].1)) {
            out.push(&text[chars[k].0..end_of(last_nl + 1)]);
            k = last_nl + 1;
            continue;
        }
        // `\s+(?!\S)`: a run not followed by non-space; before non-space, all but its last
        // character; a lone one, `\s+`.
        let j = if ws_end < chars.len() && ws_end - k >= 2 {
            ws_end - 1
        } else {
            ws_end.max(k + 1)
        };
        out.push(&text[chars[k].0..end_of(j)]);
        k = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_pattern_cuts_like_the_regex() {
        let mut v = Vec::new();
        gpt2_split("Hello world's  end\n\nok 12ab!?  ", &mut v);
        assert_eq!(
            v,
            [
                "Hello", " world", "'s", " ", " end", "\n", "\n", "ok", " 12", "ab", "!?", "  "
            ]
        );
    }

    #[test]
    fn bytes_map_is_a_bijection() {
        let m = bytes_to_unicode();
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[b'A' as usize], 'A');
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
    }
}
