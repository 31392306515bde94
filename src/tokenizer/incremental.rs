//! Streaming detokenization: turns generated ids, one at a time, into text deltas.
//!
//! Decoding tokens one by one is wrong in two ways: a character split over several
//! byte tokens comes out as U+FFFD pieces, and some decoders (SentencePiece's
//! Metaspace) drop the leading space of the first token of a decode call. So, as TGI
//! and vLLM do, each push decodes a short window of earlier tokens with and without
//! the new ones and emits the difference, and holds text back while it ends in an
//! incomplete character.
//!
//! Invariants: `read_offset <= ids.len()`; `ids[..read_offset]` is context already
//! emitted (the tokens of the previous emission); `ids[read_offset..]` is not yet
//! emitted. The window only grows while text is held back, and that is capped, so it
//! stays a handful of tokens.

use super::{Tokenizer, TokenizerError};

/// A UTF-8 character is at most four bytes and every token adds at least one, so after
/// this many held tokens the tail is not an unfinished character but invalid bytes the
/// model really produced: emit them rather than stall the stream.
const MAX_HELD_TOKENS: usize = 4;

/// How many prompt tokens `with_context` keeps as the first window.
const CONTEXT_TOKENS: usize = 5;

#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    read_offset: usize,
    /// The text `ids[read_offset..]` adds, decoded by the last push but held back.
    held: String,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from the last few prompt tokens, so that the first generated token is
    /// decoded after context, as every later one is (matters for SentencePiece-style
    /// decoders, which strip a leading space at the start of a decode).
    pub fn with_context(prompt: &[u32]) -> Self {
        let tail = &prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..];
        IncrementalDecoder { ids: tail.to_vec(), read_offset: tail.len(), held: String::new() }
    }

    /// Adds a generated token; returns the text it completes (often empty while a
    /// multi-byte character is incomplete). Special tokens produce no text.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        self.advance(tok).inspect_err(|_| {
            // Leave the decoder as it was, so a bad id does not poison the stream.
            self.ids.pop();
        })
    }

    /// Emits whatever is held back (an unfinished character comes out as U+FFFD).
    /// Needs no tokenizer: the held text was decoded by the push that held it.
    pub fn flush(&mut self) -> String {
        if self.read_offset < self.ids.len() {
            self.consume();
        }
        std::mem::take(&mut self.held)
    }

    fn advance(&mut self, tok: &Tokenizer) -> Result<String, TokenizerError> {
        let emitted = tok.decode(&self.ids[..self.read_offset], true)?;
        let full = tok.decode(&self.ids, true)?;
        // Normally `full` extends `emitted`; after forced invalid bytes it may rewrite
        // them, and then what differs is emitted again rather than lost.
        let delta = full[common_prefix_len(&emitted, &full)..].to_owned();
        let held_tokens = self.ids.len() - self.read_offset;
        if full.ends_with('\u{FFFD}') && held_tokens < MAX_HELD_TOKENS {
            self.held = delta;
            return Ok(String::new());
        }
        self.held.clear();
        self.consume();
        Ok(delta)
    }

    /// Marks everything as emitted; the tokens just emitted become the next window.
    fn consume(&mut self) {
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
    }
}

/// Length in bytes of the longest common prefix of `a` and `b`, on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        // All chars of the shorter one matched, and equal chars have equal lengths.
        .unwrap_or(a.len().min(b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::{reference, reference_ids, smollm};

    fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut d = IncrementalDecoder::new();
        let mut out: Vec<String> = ids.iter().map(|&id| d.push(tok, id).expect("push")).collect();
        out.push(d.flush());
        out
    }

    #[test]
    fn streaming_the_reference_generations_gives_the_one_shot_text() {
        let tok = smollm();
        for p in reference()["prompts"].as_array().expect("prompts") {
            let ids = reference_ids(&p["llamacpp"]["greedy_ids"]);
            let streamed = stream(tok, &ids).concat();
            assert_eq!(streamed, tok.decode(&ids, true).expect("decode"), "prompt {}", p["id"]);
        }
    }

    #[test]
    fn characters_split_over_byte_tokens_are_never_cut() {
        let tok = smollm();
        let text = "héllo 日本語 🎉 Ångström";
        let ids = tok.encode(text, false).expect("encode");
        let pieces = stream(tok, &ids);
        for p in &pieces {
            assert!(!p.contains('\u{FFFD}'), "half a character in {pieces:?}");
        }
        assert_eq!(pieces.concat(), text);
        // The emoji is several byte tokens: some pushes must have held text back.
        assert!(ids.len() > pieces.iter().filter(|p| !p.is_empty()).count(), "{pieces:?}");
    }

    #[test]
    fn leading_spaces_are_kept() {
        let tok = smollm();
        let ids = tok.encode(" Paris is  big", false).expect("encode");
        let pieces = stream(tok, &ids);
        assert_eq!(pieces[0], " Paris", "{pieces:?}");
        assert_eq!(pieces.concat(), " Paris is  big");
    }

    #[test]
    fn special_tokens_produce_no_text() {
        let tok = smollm();
        let ids = tok.encode("<|im_start|>assistant\nHi<|im_end|>", false).expect("encode");
        assert_eq!(stream(tok, &ids).concat(), "assistant\nHi");
    }

    #[test]
    fn invalid_bytes_are_emitted_once_valid_text_follows() {
        let tok = smollm();
        // "æ" is byte 0xE6 in byte-level BPE: a three-byte lead with no continuation.
        let lead = tok.token_to_id("æ").expect("byte token");
        let a = tok.token_to_id("a").expect("token a");
        let mut d = IncrementalDecoder::new();
        assert_eq!(d.push(tok, lead).expect("push"), "");
        assert_eq!(d.push(tok, a).expect("push"), "\u{FFFD}a");
        assert_eq!(d.flush(), "");
    }

    #[test]
    fn a_run_of_invalid_bytes_does_not_stall_the_stream() {
        let tok = smollm();
        let lead = tok.token_to_id("æ").expect("byte token");
        let mut d = IncrementalDecoder::new();
        let out: Vec<String> = (0..MAX_HELD_TOKENS).map(|_| d.push(tok, lead).expect("push")).collect();
        assert_eq!(out.concat(), "\u{FFFD}".repeat(MAX_HELD_TOKENS));
        assert!(d.ids.len() <= MAX_HELD_TOKENS, "window grew to {}", d.ids.len());
    }

    #[test]
    fn an_unknown_id_is_an_error_and_leaves_the_decoder_usable() {
        let tok = smollm();
        let mut d = IncrementalDecoder::new();
        assert!(d.push(tok, u32::MAX).is_err());
        let hi = tok.encode("Hi", false).expect("encode");
        assert_eq!(hi.iter().map(|&id| d.push(tok, id).expect("push")).collect::<String>(), "Hi");
    }

    #[test]
    fn held_text_comes_out_on_flush() {
        let tok = smollm();
        let ids = tok.encode("🎉", false).expect("encode");
        let mut d = IncrementalDecoder::new();
        assert_eq!(d.push(tok, ids[0]).expect("push"), "");
        assert_eq!(d.flush(), "\u{FFFD}");
    }

    #[test]
    fn context_does_not_leak_into_the_output() {
        let tok = smollm();
        let prompt = tok.encode("The capital of France is", false).expect("encode");
        let mut d = IncrementalDecoder::with_context(&prompt);
        let paris = tok.encode(" Paris", false).expect("encode");
        assert_eq!(paris.iter().map(|&id| d.push(tok, id).expect("push")).collect::<String>(), " Paris");
    }

    #[test]
    fn common_prefix_respects_char_boundaries() {
        assert_eq!(common_prefix_len("ab", "abc"), 2);
        assert_eq!(common_prefix_len("a\u{FFFD}", "a日"), 1);
        assert_eq!(common_prefix_len("", "x"), 0);
        assert_eq!(common_prefix_len("abc", "ab"), 2);
    }
}
