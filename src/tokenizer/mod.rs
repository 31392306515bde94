//! Tokenizer, chat template and incremental detokenizer.
//!
//! `Tokenizer` wraps a `tokenizers::Tokenizer` built from GGUF metadata (`gguf.rs`) or
//! a Hugging Face folder (`hf_dir.rs`) and adds what serving needs on top: BOS
//! handling, the set of ids that end a turn, and the chat template
//! (`chat_template.rs`). `IncrementalDecoder` (`incremental.rs`) turns generated ids
//! into streamed text.
//!
//! Invariant: special tokens written in input text are always recognised as specials
//! (llama.cpp's `parse_special = true`), so a rendered chat prompt encodes to the ids
//! the model was trained on.

mod chat_template;
mod error;
mod gguf;
mod hf_dir;
mod incremental;
pub mod template_sandbox;

use std::collections::HashSet;
use std::path::Path;

use candle_core::quantized::gguf_file;

pub use chat_template::{ChatMessage, ChatTemplate, MAX_RENDERED_BYTES, RENDER_FUEL};
pub use error::TokenizerError;
pub use incremental::IncrementalDecoder;
pub use template_sandbox::{SandboxLimits, TemplateSandbox};

/// Tokens that end an assistant turn in common chat formats, besides EOS.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
];

/// What a loader finds besides the `tokenizers` object itself.
pub(crate) struct TokenizerMeta {
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub add_bos_token: bool,
    /// Ids the model files name as ending generation, besides EOS.
    pub extra_stop_ids: Vec<u32>,
    pub chat_template: Option<String>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    add_bos_token: bool,
    stop_token_ids: Vec<u32>,
    /// Added tokens flagged special: skipped by `decode(.., skip_special = true)`.
    special_ids: HashSet<u32>,
    /// One past the largest id, so every id below it decodes.
    vocab_size: usize,
    chat_template: Option<ChatTemplate>,
    /// Set once the chat template renders in worker processes.
    template_sandbox: std::sync::OnceLock<TemplateSandbox>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .field("add_bos_token", &self.add_bos_token)
            .field("stop_token_ids", &self.stop_token_ids)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// A byte-level BPE tokenizer from GGUF metadata; see `gguf.rs` for what is read.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Tokenizer, TokenizerError> {
        let (inner, meta) = gguf::build(content)?;
        Ok(Self::assemble(inner, meta))
    }

    /// `tokenizer.json` and its companion files in a Hugging Face model folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let (inner, meta) = hf_dir::build(dir)?;
        Ok(Self::assemble(inner, meta))
    }

    fn assemble(inner: tokenizers::Tokenizer, meta: TokenizerMeta) -> Tokenizer {
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1);
        let added = inner.get_added_tokens_decoder();
        let special_ids: HashSet<u32> = added.iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();

        let mut stop_token_ids = Vec::new();
        let named_turn_ends = END_OF_TURN_TOKENS
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            // Only real added tokens: an ordinary token spelling the same text is not a
            // turn boundary the model was trained to emit.
            .filter(|id| added.contains_key(id));
        for id in meta.eos_token_id.into_iter().chain(meta.extra_stop_ids).chain(named_turn_ends) {
            if (id as usize) < vocab_size && !stop_token_ids.contains(&id) {
                stop_token_ids.push(id);
            }
        }

        let content_of = |id: Option<u32>| id.and_then(|id| inner.id_to_token(id)).unwrap_or_default();
        let chat_template = meta.chat_template.map(|source| {
            ChatTemplate::new(source, content_of(meta.bos_token_id), content_of(meta.eos_token_id))
        });
        Tokenizer {
            bos_token_id: meta.bos_token_id,
            eos_token_id: meta.eos_token_id,
            add_bos_token: meta.add_bos_token,
            stop_token_ids,
            special_ids,
            vocab_size,
            chat_template,
            template_sandbox: std::sync::OnceLock::new(),
            inner,
        }
    }

    /// Writes this tokenizer as a Hugging Face folder's `tokenizer.json` and
    /// `tokenizer_config.json` (BOS/EOS, `add_bos_token`, chat template), which
    /// [`Tokenizer::from_hf_dir`] and transformers read back: how a GGUF's tokenizer
    /// travels with a safetensors checkpoint.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<(), TokenizerError> {
        let io = |path: std::path::PathBuf| move |e: std::io::Error| TokenizerError::Io { path, source: e };
        std::fs::create_dir_all(dir).map_err(io(dir.into()))?;
        let json = self.inner.to_string(false).map_err(|e| TokenizerError::tokenizers("serializing", e))?;
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json).map_err(io(path.clone()))?;
        let token = |id: Option<u32>| id.and_then(|id| self.inner.id_to_token(id));
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(self.bos_token_id),
            "eos_token": token(self.eos_token_id),
            "add_bos_token": self.add_bos_token,
            "chat_template": self.chat_template.as_ref().map(|t| t.source()),
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, config.to_string()).map_err(io(path.clone()))
    }

    /// Token ids of `text`; special tokens written in it become their ids. With
    /// `add_bos`, BOS is prepended unless the text already starts with it (a chat
    /// template that writes `bos_token` itself must not get a second one).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc =
            self.inner.encode_fast(text, false).map_err(|e| TokenizerError::tokenizers("encoding", e))?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some(bos)) = (add_bos, self.bos_token_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The text of `ids`; an id outside the vocabulary is an error, not skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::InvalidTokenId { id, vocab_size: self.vocab_size });
        }
        self.inner.decode(ids, skip_special).map_err(|e| TokenizerError::tokenizers("decoding", e))
    }

    /// One past the largest token id.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// One token as readable text (for logprobs): a byte that is only part of a
    /// character shows as U+FFFD.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.decode(&[id], false).ok()
    }

    /// The id of a token given its vocabulary spelling (byte-level form for BPE, e.g.
    /// "Ġthe"), or its text for added tokens.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Whether the model expects BOS at the start of a prompt.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// Ids that end generation: EOS, then end-of-turn tokens the vocabulary has.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The chat template's source, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_ref().map(ChatTemplate::source)
    }

    /// Replaces the model's chat template (`--chat-template`).
    pub fn set_chat_template(&mut self, source: String) {
        let (bos, eos) = match &self.chat_template {
            Some(t) => (t.bos_token().to_owned(), t.eos_token().to_owned()),
            None => {
                let content_of =
                    |id: Option<u32>| id.and_then(|id| self.inner.id_to_token(id)).unwrap_or_default();
                (content_of(self.bos_token_id), content_of(self.eos_token_id))
            }
        };
        self.chat_template = Some(ChatTemplate::new(source, bos, eos));
        self.template_sandbox = std::sync::OnceLock::new();
    }

    /// Renders the chat template in worker processes started from `exe` (the
    /// `inflight` binary), bounded by `limits` (`template_sandbox.rs`), and starts
    /// them. Without a template, nothing to do.
    pub fn isolate_chat_template(
        &self,
        exe: std::path::PathBuf,
        limits: SandboxLimits,
        concurrency: usize,
    ) -> Result<(), TokenizerError> {
        let Some(template) = &self.chat_template else { return Ok(()) };
        self.template_sandbox
            .get_or_init(|| TemplateSandbox::new(exe, template, limits, concurrency))
            .warm_up()
    }

    /// The prompt text for a conversation, rendered with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
        match self.template_sandbox.get() {
            Some(sandbox) => sandbox.render(messages, add_generation_prompt),
            None => template.render(messages, add_generation_prompt),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Instant;

    use serde_json::Value;

    use super::*;

    fn model_path() -> PathBuf {
        crate::testing::default_model_path()
    }

    /// `INFLIGHT_REFERENCE_DIR`, else `../shared/reference` beside the checkout.
    fn reference_dir() -> PathBuf {
        std::env::var("INFLIGHT_REFERENCE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"))
    }

    pub(crate) fn reference() -> &'static Value {
        static REF: OnceLock<Value> = OnceLock::new();
        REF.get_or_init(|| {
            let path = reference_dir().join("smollm2-135m-q4_1.json");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::from_str(&text).expect("reference JSON")
        })
    }

    pub(crate) fn reference_ids(v: &Value) -> Vec<u32> {
        v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    }

    fn gguf_content() -> gguf_file::Content {
        let path = model_path();
        let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        gguf_file::Content::read(&mut f).expect("GGUF header")
    }

    pub(crate) fn smollm() -> &'static Tokenizer {
        static TOK: OnceLock<Tokenizer> = OnceLock::new();
        TOK.get_or_init(|| Tokenizer::from_gguf(&gguf_content()).expect("tokenizer from GGUF"))
    }

    #[test]
    fn the_models_template_renders_a_full_request_body_of_messages_within_its_fuel() {
        // The most messages a 4 MiB body holds: `{"role":"user","content":""},` each.
        let n = (4 << 20) / 30;
        let messages = vec![ChatMessage { role: "user".into(), content: String::new() }; n];
        let out = smollm().apply_chat_template(&messages, true).expect("renders within the fuel");
        assert_eq!(out.matches("<|im_start|>user").count(), n);
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
        check::<IncrementalDecoder>();
    }

    #[test]
    fn reference_strings_encode_to_llama_cpp_ids_and_decode_back() {
        let tok = smollm();
        let cases = reference()["tokenization"].as_array().expect("tokenization");
        assert!(cases.iter().any(|c| c["text"].as_str().is_some_and(|t| t.contains('½'))));
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let want = reference_ids(&case["llamacpp_ids"]);
            assert_eq!(tok.encode(text, false).expect("encode"), want, "encoding {text:?}");
            assert_eq!(tok.decode(&want, false).expect("decode"), text, "decoding {text:?}");
        }
    }

    #[test]
    fn reference_prompts_render_and_encode_to_llama_cpp_ids() {
        let tok = smollm();
        for p in reference()["prompts"].as_array().expect("prompts") {
            let text = match p["kind"].as_str() {
                Some("chat") => {
                    let messages: Vec<ChatMessage> = p["messages"]
                        .as_array()
                        .expect("messages")
                        .iter()
                        .map(|m| ChatMessage {
                            role: m["role"].as_str().expect("role").into(),
                            content: m["content"].as_str().expect("content").into(),
                        })
                        .collect();
                    let rendered = tok.apply_chat_template(&messages, true).expect("template");
                    assert_eq!(Some(rendered.as_str()), p["prompt_text"].as_str(), "rendering {}", p["id"]);
                    rendered
                }
                Some("text") => p["prompt_text"].as_str().expect("prompt_text").to_owned(),
                other => panic!("unknown prompt kind {other:?}"),
            };
            assert_eq!(
                tok.encode(&text, false).expect("encode"),
                reference_ids(&p["prompt_ids"]),
                "{}",
                p["id"]
            );
        }
    }

    #[test]
    fn smollm_special_tokens_and_flags() {
        let tok = smollm();
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(tok.bos_token_id(), Some(1));
        assert_eq!(tok.eos_token_id(), Some(2));
        assert!(!tok.add_bos_token());
        // EOS is <|im_end|> here; <|endoftext|> (0) also ends generation.
        assert_eq!(tok.stop_token_ids()[0], 2);
        assert!(tok.stop_token_ids().contains(&0));
        assert_eq!(tok.stop_token_ids().iter().filter(|&&id| id == 2).count(), 1);
        assert!(tok.is_special(2) && tok.is_special(1));
        assert!(!tok.is_special(504));
        assert_eq!(tok.token_str(7042).as_deref(), Some(" Paris"));
        assert_eq!(tok.token_str(2).as_deref(), Some("<|im_end|>"));
        assert_eq!(tok.token_str(49152), None);
    }

    #[test]
    fn bos_is_added_once() {
        let tok = smollm();
        assert_eq!(tok.encode("Hi", true).expect("encode")[0], 1);
        let ids = tok.encode("<|im_start|>user", true).expect("encode");
        assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 1, "{ids:?}");
    }

    #[test]
    fn decoding_can_skip_specials_and_rejects_unknown_ids() {
        let tok = smollm();
        let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).expect("encode");
        assert_eq!(ids[0], 1);
        assert_eq!(tok.decode(&ids, true).expect("decode"), "user\nHi");
        assert!(matches!(
            tok.decode(&[5, 60000], false),
            Err(TokenizerError::InvalidTokenId { id: 60000, .. })
        ));
    }

    #[test]
    fn hf_folder_loads_with_config_and_generation_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let json = smollm().inner.to_string(false).expect("serialize");
        std::fs::write(dir.path().join("tokenizer.json"), json).expect("write");
        let config = serde_json::json!({
            "bos_token": {"content": "<|im_start|>", "special": true},
            "eos_token": "<|im_end|>",
            "chat_template": smollm().chat_template().expect("template"),
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("write");
        std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [2, 5]}"#)
            .expect("write");

        let tok = Tokenizer::from_hf_dir(dir.path()).expect("loads");
        assert_eq!(tok.bos_token_id(), Some(1));
        assert_eq!(tok.eos_token_id(), Some(2));
        assert!(!tok.add_bos_token());
        assert_eq!(&tok.stop_token_ids()[..2], &[2, 5]);
        let chat = reference()["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .find(|p| p["kind"] == "chat")
            .expect("a chat prompt");
        let text = chat["prompt_text"].as_str().expect("prompt_text");
        assert_eq!(tok.encode(text, false).expect("encode"), reference_ids(&chat["prompt_ids"]));
        let messages = [ChatMessage { role: "user".into(), content: "Hi".into() }];
        assert_eq!(
            tok.apply_chat_template(&messages, false).expect("renders"),
            smollm().apply_chat_template(&messages, false).expect("renders")
        );
    }

    #[test]
    fn hf_folder_without_tokenizer_json_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Tokenizer::from_hf_dir(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn no_template_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let json = smollm().inner.to_string(false).expect("serialize");
        std::fs::write(dir.path().join("tokenizer.json"), json).expect("write");
        let tok = Tokenizer::from_hf_dir(dir.path()).expect("loads");
        let messages = [ChatMessage { role: "user".into(), content: "Hi".into() }];
        assert!(matches!(tok.apply_chat_template(&messages, true), Err(TokenizerError::NoChatTemplate)));
    }

    /// Not a benchmark: one timing of a 1,000-word prompt, printed for the record
    /// (`--nocapture`), with a bound loose enough never to flake.
    #[test]
    fn encoding_a_thousand_words_is_fast() {
        let tok = smollm();
        // Varied made-up words, so the BPE cache does not make it look faster.
        let syllables = ["ka", "lo", "mir", "ten", "as", "vu", "pre", "ols", "qui", "da", "né", "7"];
        let mut seed = 12345u32;
        let text: String = (0..1000)
            .map(|_| {
                (0..3)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        syllables[(seed >> 16) as usize % syllables.len()]
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ");
        let start = Instant::now();
        let ids = tok.encode(&text, false).expect("encode");
        let took = start.elapsed();
        eprintln!("encode: 1000 words -> {} tokens in {took:?}", ids.len());
        assert!(ids.len() >= 1000);
        assert!(took.as_secs_f64() < 1.0, "{took:?}");
    }
}
