//! Loads a tokenizer from a Hugging Face model folder: `tokenizer.json`, plus
//! `tokenizer_config.json` (chat template, BOS/EOS, `add_bos_token`), an optional
//! `chat_template.jinja` (newer repos keep the template there), and an optional
//! `generation_config.json` (extra EOS ids that end a turn).

use std::path::Path;

use serde_json::Value;

use super::{TokenizerError, TokenizerMeta};

pub(super) fn build(dir: &Path) -> Result<(tokenizers::Tokenizer, TokenizerMeta), TokenizerError> {
    let path = dir.join("tokenizer.json");
    let text = read(&path)?;
    let mut tok: tokenizers::Tokenizer = text.parse().map_err(|e: tokenizers::Error| {
        TokenizerError::Parse { path: path.clone(), message: e.to_string() }
    })?;
    // Prompts are never cut or padded here: the API rejects prompts that are too long.
    tok.with_truncation(None).map_err(|e| TokenizerError::tokenizers("disabling truncation", e))?;
    tok.with_padding(None);

    let config = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let generation = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);

    let token_id = |key: &str| token_content(&config[key]).and_then(|s| tok.token_to_id(s));
    let bos_token_id = token_id("bos_token").or_else(|| json_id(&generation["bos_token_id"]));
    let eos_token_id = token_id("eos_token");
    let extra_stop_ids: Vec<u32> = match &generation["eos_token_id"] {
        Value::Array(ids) => ids.iter().filter_map(json_id).collect(),
        v => json_id(v).into_iter().collect(),
    };
    let eos_token_id = eos_token_id.or_else(|| extra_stop_ids.first().copied());

    let add_bos_token = match config["add_bos_token"].as_bool() {
        Some(b) => b,
        // Without the flag, the post-processor in tokenizer.json decides (Llama 3 adds
        // BOS that way): ask it.
        None => match bos_token_id {
            Some(bos) => tok
                .encode_fast("", true)
                .map(|e| e.get_ids().first() == Some(&bos))
                .map_err(|e| TokenizerError::tokenizers("probing the post-processor for BOS", e))?,
            None => false,
        },
    };

    let chat_template = match template_from_config(&config["chat_template"]) {
        Some(t) => Some(t),
        None => {
            let path = dir.join("chat_template.jinja");
            if path.exists() {
                Some(read(&path)?)
            } else {
                None
            }
        }
    };

    let meta = TokenizerMeta { bos_token_id, eos_token_id, add_bos_token, extra_stop_ids, chat_template };
    Ok((tok, meta))
}

/// `chat_template` is a string, or a list of `{name, template}` of which "default" is
/// the one for plain chat.
fn template_from_config(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| list.iter().find(|t| t["name"] == name);
            named("default").or_else(|| list.first())?["template"].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

/// Special tokens appear as a plain string or as an `AddedToken` object.
fn token_content(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v["content"].as_str())
}

fn json_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|i| u32::try_from(i).ok())
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })
}

fn read_json_opt(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.exists() {
        return Ok(None);
    }
    serde_json::from_str(&read(path)?)
        .map(Some)
        .map_err(|e| TokenizerError::Parse { path: path.to_path_buf(), message: e.to_string() })
}
