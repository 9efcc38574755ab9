//! BERT's WordPiece tokeniser from a Hugging Face `tokenizer.json`: the `BertNormalizer`
//! (clean text, space around CJK characters, strip accents, lowercase), the
//! `BertPreTokenizer` (split at whitespace and punctuation), greedy longest-match WordPiece
//! with the `##` prefix, and `[CLS] … [SEP]` around the result, as `tokenizers` does.

use std::collections::HashMap;

use serde::Deserialize;
use unicode_general_category::{GeneralCategory as G, get_general_category};
use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

fn err(msg: impl Into<String>) -> Error {
    Error::Tensor(format!("tokenizer.json: {}", msg.into()))
}

/// A WordPiece tokeniser.
#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_word_chars: usize,
    lowercase: bool,
    strip_accents: bool,
    chinese_chars: bool,
    clean_text: bool,
}

#[derive(Deserialize)]
struct File {
    normalizer: Option<Normalizer>,
    model: Model,
}

#[derive(Deserialize)]
struct Normalizer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    clean_text: Option<bool>,
    #[serde(default)]
    handle_chinese_chars: Option<bool>,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default)]
    lowercase: Option<bool>,
}

#[derive(Deserialize)]
struct Model {
    #[serde(rename = "type")]
    kind: String,
    unk_token: String,
    #[serde(default = "default_prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "default_max_chars")]
    max_input_chars_per_word: usize,
    vocab: HashMap<String, u32>,
}

fn default_prefix() -> String {
    "##".into()
}

fn default_max_chars() -> usize {
    100
}

impl WordPiece {
    /// Read a `tokenizer.json` whose model is WordPiece.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let f: File = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        if f.model.kind != "WordPiece" {
            return Err(err(format!(
                "model type {:?} is not supported here (WordPiece is)",
                f.model.kind
            )));
        }
        let n = f.normalizer;
        if let Some(n) = &n
            && n.kind != "BertNormalizer"
        {
            return Err(err(format!(
                "normalizer {:?} is not supported (BertNormalizer is)",
                n.kind
            )));
        }
        let lowercase = n.as_ref().and_then(|n| n.lowercase).unwrap_or(true);
        let id = |t: &str| {
            f.model
                .vocab
                .get(t)
                .copied()
                .ok_or_else(|| err(format!("the vocabulary has no {t}")))
        };
        Ok(WordPiece {
            unk: id(&f.model.unk_token)?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            prefix: f.model.continuing_subword_prefix,
            max_word_chars: f.model.max_input_chars_per_word,
            lowercase,
            // `null` means: as lowercase says.
            strip_accents: n
                .as_ref()
                .and_then(|n| n.strip_accents)
                .unwrap_or(lowercase),
            chinese_chars: n
                .as_ref()
                .and_then(|n| n.handle_chinese_chars)
                .unwrap_or(true),
            clean_text: n.as_ref().and_then(|n| n.clean_text).unwrap_or(true),
            vocab: f.model.vocab,
        })
    }

    /// Vocabulary size (the largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.vocab.values().max().map_or(0, |&m| m as usize + 1)
    }

    /// `[CLS] tokens [SEP]`, at most `max_len` ids in all (the text is cut to fit).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = vec![self.cls];
        let room = max_len.saturating_sub(2);
        'words: for word in pre_tokenize(&self.normalize(text)) {
            for id in self.word(&word) {
                if ids.len() > room {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{FFFD}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    s.push(' ');
                    continue;
                }
            }
            if self.chinese_chars && is_cjk(c) {
                s.push(' ');
                s.push(c);
                s.push(' ');
            } else {
                s.push(c);
            }
        }
        if self.strip_accents {
            s = s
                .nfd()
                .filter(|&c| get_general_category(c) != G::NonspacingMark)
                .collect();
        }
        if self.lowercase {
            s = s.to_lowercase();
        }
        s
    }

    fn word(&self, word: &str) -> Vec<u32> {
        let chars: Vec<(usize, char)> = word.char_indices().collect();
        if chars.len() > self.max_word_chars {
            return vec![self.unk];
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let from = chars[start].0;
                let to = chars.get(end).map_or(word.len(), |c| c.0);
                let piece = if start > 0 {
                    format!("{}{}", self.prefix, &word[from..to])
                } else {
                    word[from..to].to_string()
                };
                if let Some(&id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => return vec![self.unk],
            }
        }
        out
    }
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || get_general_category(c) == G::SpaceSeparator
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        get_general_category(c),
        G::Control | G::Format | G::Surrogate | G::PrivateUse | G::Unassigned
    )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            G::ConnectorPunctuation
                | G::DashPunctuation
                | G::OpenPunctuation
                | G::ClosePunctuation
                | G::InitialPunctuation
                | G::FinalPunctuation
                | G::OtherPunctuation
        )
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// Split at whitespace (dropped) and around each punctuation character (kept alone).
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_whitespace() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if is_punctuation(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(c.to_string());
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "un", "##aff", "##able", ",",
            "!", "cafe", "中",
        ];
        let json = serde_json::json!({
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                "vocab": vocab.iter().enumerate().map(|(i, t)| (t.to_string(), i)).collect::<HashMap<_, _>>()}
        });
        WordPiece::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn normalises_splits_and_matches_longest_first() {
        let t = tiny();
        assert_eq!(t.encode("Hello, WORLD!", 64), [2, 4, 9, 5, 10, 3]);
        assert_eq!(t.encode("unaffable", 64), [2, 6, 7, 8, 3]);
        // Accents stripped after lowercasing; CJK characters stand alone.
        assert_eq!(t.encode("Café中hello", 64), [2, 11, 12, 4, 3]);
        // A word that cannot be cut is one [UNK].
        assert_eq!(t.encode("unaffxyz hello", 64), [2, 1, 4, 3]);
        // Truncation keeps [CLS] and [SEP].
        assert_eq!(t.encode("hello world hello", 4), [2, 4, 5, 3]);
    }
}
