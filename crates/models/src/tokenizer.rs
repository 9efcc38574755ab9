//! Byte-level BPE tokenisers from GGUF metadata (`tokenizer.ggml.model = "gpt2"`), with
//! llama.cpp's pre-tokenisers: `gpt2`-style splitting, and `smollm`, which first cuts every
//! digit on its own (as SmolLM's vocabulary expects).
//!
//! Encoding: the text is cut into pre-tokens, each pre-token's UTF-8 bytes are mapped to
//! GPT-2's printable stand-ins (`bytes_to_unicode`), and the merges are applied, lowest rank
//! first, until none applies; the pieces are looked up in the vocabulary. Decoding maps the
//! pieces back to bytes. Control and user-defined tokens can be matched whole
//! ([`Tokenizer::encode_special`]), as chat templates need. SentencePiece vocabularies come next.

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
    /// SmolLM: every digit alone, then GPT-2's pattern on the rest.
    SmolLm,
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
}

/// GGUF `tokenizer.ggml.token_type` values.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

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
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model {model:?} is not supported yet (gpt2 is)"
            )));
        }
        let pre = match g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
            Some("smollm") => PreTokenizer::SmolLm,
            Some("gpt-2") | Some("gpt2") | None => PreTokenizer::Gpt2,
            Some(other) => {
                return Err(err(format!(
                    "pre-tokeniser {other:?} is not supported yet (gpt-2, smollm are)"
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
        let merges = strings("tokenizer.ggml.merges")?;
        let mut t = Tokenizer::new(tokens, &merges, pre)?;
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
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token; at one position, the longest.
            let next = self
                .special
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match next {
                Some((at, len, id)) => {
                    out.extend(self.encode(&rest[..at])?);
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    out.extend(self.encode(rest)?);
                    break;
                }
            }
        }
        Ok(out)
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

    fn bpe(&self, piece: &str, out: &mut Vec<u32>) -> Result<()> {
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
