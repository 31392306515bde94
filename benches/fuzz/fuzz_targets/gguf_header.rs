//! GGUF header bytes → what the server reads from them at load: candle's header
//! parser behind `read_gguf` (as `WeightSource::open_gguf` calls it),
//! then the model config (`LlamaConfig::from_gguf`) and the tokenizer with its chat
//! template (`Tokenizer::from_gguf`). A malformed file must be an error; a panic,
//! an abort on a huge allocation or a hang is a finding.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use inflight::model::weights::read_gguf;
use inflight::model::LlamaConfig;
use inflight::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = read_gguf(&mut Cursor::new(data)) else { return };
    let _ = LlamaConfig::from_gguf(&content, Path::new("fuzz.gguf"));
    let _ = Tokenizer::from_gguf(&content);
});
