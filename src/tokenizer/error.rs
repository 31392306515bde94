//! The one error type of the tokenizer module: loading a tokenizer, encoding and
//! decoding, and rendering chat templates.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TokenizerError {
    /// The model's tokenizer is of a kind this module cannot build (another tokenizer
    /// model than byte-level BPE, or an unknown pre-tokenizer).
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// GGUF metadata a tokenizer needs is missing or has the wrong type.
    #[error("GGUF tokenizer metadata `{key}`: {message}")]
    Metadata { key: &'static str, message: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// An error reported by the `tokenizers` crate, with what we asked it to do.
    #[error("{op}: {message}")]
    Tokenizers { op: &'static str, message: String },
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    InvalidTokenId { id: u32, vocab_size: usize },
    #[error("this model has no chat template; send a plain prompt instead")]
    NoChatTemplate,
    /// The chat template did not compile, failed while rendering, or called
    /// `raise_exception` (then the message is the template's own).
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

impl TokenizerError {
    pub(crate) fn tokenizers(op: &'static str, e: tokenizers::Error) -> Self {
        TokenizerError::Tokenizers { op, message: e.to_string() }
    }
}
