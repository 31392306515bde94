//! Builds a byte-level BPE tokenizer from GGUF metadata (`tokenizer.ggml.*`), the way
//! llama.cpp reads it: same vocabulary, merges, pre-tokenizer split and special-token
//! matching, so that our ids equal llama.cpp's for the same text.
//!
//! Only `tokenizer.ggml.model = "gpt2"` (byte-level BPE) is supported. The
//! pre-tokenizer is chosen by `tokenizer.ggml.pre`, mirroring llama.cpp's table; an
//! unknown name is an error rather than a silent fallback, because a wrong split gives
//! plausible-looking but different ids.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::{TokenizerError, TokenizerMeta};

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The Llama 3 split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`): numbers in groups of
/// up to three, a leading non-letter glued to a word.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen 2 split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`): as Llama 3 but digits one
/// by one.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a `tokenizer.ggml.pre` name splits text before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreSplit {
    /// GPT-2's byte-level regex alone.
    Gpt2,
    /// Every digit on its own, then GPT-2's regex (SmolLM, StarCoder and relatives).
    DigitsThenGpt2,
    Llama3,
    Qwen2,
}

impl PreSplit {
    fn from_name(name: &str) -> Result<Self, TokenizerError> {
        Ok(match name {
            // llama.cpp adds a few extra splits for a missing/"default" name and warns
            // that quality suffers; GPT-2's regex is the sensible reading of it.
            "gpt2" | "gpt-2" | "default" => PreSplit::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
                PreSplit::DigitsThenGpt2
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => PreSplit::Llama3,
            "qwen2" | "deepseek-r1-qwen" => PreSplit::Qwen2,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "pre-tokenizer `tokenizer.ggml.pre = {other:?}` (supported: gpt2, default, smollm, \
                     starcoder, refact, command-r, codeshell, exaone, minerva, llama3, llama-bpe, \
                     falcon3, qwen2, deepseek-r1-qwen)"
                )))
            }
        })
    }

    /// llama.cpp skips BPE merges for words already in the vocabulary only for Llama 3.
    fn ignore_merges(self) -> bool {
        self == PreSplit::Llama3
    }

    fn build(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let byte_level_regex = ByteLevel::new(false, true, true);
        let byte_level_only = ByteLevel::new(false, true, false);
        let split = |re: &str| {
            Split::new(SplitPattern::Regex(re.to_owned()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| TokenizerError::tokenizers("compiling the pre-tokenizer regex", e))
        };
        Ok(match self {
            PreSplit::Gpt2 => byte_level_regex.into(),
            PreSplit::DigitsThenGpt2 => {
                Sequence::new(vec![Digits::new(true).into(), byte_level_regex.into()]).into()
            }
            PreSplit::Llama3 => {
                Sequence::new(vec![split(LLAMA3_SPLIT)?.into(), byte_level_only.into()]).into()
            }
            PreSplit::Qwen2 => Sequence::new(vec![split(QWEN2_SPLIT)?.into(), byte_level_only.into()]).into(),
        })
    }
}

/// Builds the tokenizer and what it needs beyond the `tokenizers` object.
pub(super) fn build(content: &Content) -> Result<(tokenizers::Tokenizer, TokenizerMeta), TokenizerError> {
    let md = Metadata(content);
    let model = md.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(format!(
            "tokenizer model `tokenizer.ggml.model = {model:?}`: only byte-level BPE (\"gpt2\") is supported"
        )));
    }
    let pre = PreSplit::from_name(md.opt_string("tokenizer.ggml.pre")?.unwrap_or("default"))?;

    let tokens = md.strings("tokenizer.ggml.tokens")?;
    let merges = md
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            // Byte-level tokens never contain a raw space, so the first one separates
            // the pair.
            m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| {
                TokenizerError::Metadata { key: "tokenizer.ggml.merges", message: format!("bad merge {m:?}") }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let types = md.opt_ints("tokenizer.ggml.token_type")?.unwrap_or_default();

    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| ((*t).to_owned(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|e| TokenizerError::tokenizers("building the BPE model from GGUF", e))?;

    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre.build()?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens are matched in the text and skipped when decoding with
    // skip_special; user-defined ones are matched too but always printed, as
    // llama.cpp does. Both are stored as raw text, so they bypass normalization.
    let mut control = Vec::new();
    let mut user_defined = Vec::new();
    for (t, ty) in tokens.iter().zip(&types) {
        match *ty {
            TOKEN_TYPE_CONTROL => control.push(AddedToken::from(*t, true).normalized(false)),
            TOKEN_TYPE_USER_DEFINED => user_defined.push(AddedToken::from(*t, false).normalized(false)),
            _ => {}
        }
    }
    tok.add_special_tokens(control)
        .map_err(|e| TokenizerError::tokenizers("adding the GGUF's control tokens", e))?;
    tok.add_tokens(user_defined)
        .map_err(|e| TokenizerError::tokenizers("adding the GGUF's user-defined tokens", e))?;

    let mut extra_stop_ids = Vec::new();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        extra_stop_ids.extend(md.opt_id(key)?);
    }
    let meta = TokenizerMeta {
        bos_token_id: md.opt_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: md.opt_id("tokenizer.ggml.eos_token_id")?,
        add_bos_token: md.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        extra_stop_ids,
        chat_template: md.opt_string("tokenizer.chat_template")?.map(str::to_owned),
    };
    Ok((tok, meta))
}

/// Typed access to GGUF metadata with errors that name the key.
struct Metadata<'a>(&'a Content);

impl<'a> Metadata<'a> {
    fn get(&self, key: &'static str) -> Result<&'a Value, TokenizerError> {
        self.0.metadata.get(key).ok_or(TokenizerError::Metadata { key, message: "missing".into() })
    }

    fn wrong(key: &'static str, want: &str, got: &Value) -> TokenizerError {
        TokenizerError::Metadata { key, message: format!("expected {want}, found {:?}", got.value_type()) }
    }

    fn string(&self, key: &'static str) -> Result<&'a str, TokenizerError> {
        let v = self.get(key)?;
        v.to_string().map(String::as_str).map_err(|_| Self::wrong(key, "a string", v))
    }

    fn opt_string(&self, key: &'static str) -> Result<Option<&'a str>, TokenizerError> {
        if self.0.metadata.contains_key(key) {
            self.string(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_bool(&self, key: &'static str) -> Result<Option<bool>, TokenizerError> {
        match self.0.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.to_bool().map(Some).map_err(|_| Self::wrong(key, "a bool", v)),
        }
    }

    fn opt_id(&self, key: &'static str) -> Result<Option<u32>, TokenizerError> {
        match self.0.metadata.get(key) {
            None => Ok(None),
            Some(v) => int(v)
                .and_then(|i| u32::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "a token id", v)),
        }
    }

    fn array(&self, key: &'static str) -> Result<&'a [Value], TokenizerError> {
        let v = self.get(key)?;
        v.to_vec().map(Vec::as_slice).map_err(|_| Self::wrong(key, "an array", v))
    }

    fn strings(&self, key: &'static str) -> Result<Vec<&'a str>, TokenizerError> {
        self.array(key)?
            .iter()
            .map(|v| {
                v.to_string().map(String::as_str).map_err(|_| Self::wrong(key, "an array of strings", v))
            })
            .collect()
    }

    fn opt_ints(&self, key: &'static str) -> Result<Option<Vec<i64>>, TokenizerError> {
        if !self.0.metadata.contains_key(key) {
            return Ok(None);
        }
        self.array(key)?
            .iter()
            .map(|v| int(v).ok_or_else(|| Self::wrong(key, "an array of integers", v)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// GGUF writers disagree on integer widths (token types are i32, ids u32 or i32...).
fn int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn content(md: Vec<(&str, Value)>) -> Content {
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: md.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<HashMap<_, _>>(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn strings(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String((*s).to_owned())).collect())
    }

    fn tiny(model: &str, pre: &str) -> Content {
        content(vec![
            ("tokenizer.ggml.model", Value::String(model.into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(&["<s>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "12"])),
            ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab", "1 2"])),
            ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(3); 1])),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ])
    }

    #[test]
    fn other_tokenizer_models_are_named_in_the_error() {
        let err = build(&tiny("llama", "default")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("\"llama\""), "{err}");
    }

    #[test]
    fn unknown_pre_tokenizers_are_named_in_the_error() {
        let err = build(&tiny("gpt2", "mystery")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("\"mystery\""), "{err}");
    }

    #[test]
    fn missing_keys_are_named_in_the_error() {
        let mut c = tiny("gpt2", "smollm");
        c.metadata.remove("tokenizer.ggml.merges");
        let err = build(&c).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("tokenizer.ggml.merges"), "{err}");
    }

    #[test]
    fn digit_splitting_depends_on_the_pre_tokenizer() {
        let encode = |pre: &str| {
            let (tok, _) = build(&tiny("gpt2", pre)).expect("builds");
            tok.encode_fast("ab ab12<s>", false).expect("encodes").get_ids().to_vec()
        };
        // smollm: "1" and "2" stay apart; gpt2: the number is one word and merges.
        assert_eq!(encode("smollm"), vec![3, 5, 6, 7, 0]);
        assert_eq!(encode("gpt2"), vec![3, 5, 8, 0]);
        assert_eq!(encode("llama-bpe"), vec![3, 5, 8, 0]);
        assert_eq!(encode("qwen2"), vec![3, 5, 6, 7, 0]);
    }
}
