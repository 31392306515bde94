//! Request body bytes → validated request, the server's own path: the JSON read
//! (`handlers::parse_json`), then `validate::body` with the real default model's
//! tokenizer and chat template. The first byte picks chat or completions. Every
//! input must end in `Ok` or an `ApiError` with a 4xx status; a panic, a hang or a
//! 5xx is a finding.
#![no_main]

use std::sync::OnceLock;

use inflight::api::handlers::parse_json;
use inflight::api::validate::{self, Endpoint, Limits, TenantTokenCap};
use inflight::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = inflight::testing::default_model_path();
        let mut f = std::fs::File::open(&path).expect("open the default model");
        let content = candle_core::quantized::gguf_file::Content::read(&mut f).expect("GGUF header");
        Tokenizer::from_gguf(&content).expect("tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let endpoint = if selector & 1 == 0 { Endpoint::Chat } else { Endpoint::Completion };
    let limits = Limits {
        tokenizer: tokenizer(),
        served_model: "test-model",
        max_context: 8192,
        // Half the inputs as a tenant with a per-request cap, the other path.
        tenant_cap: (selector & 2 != 0).then_some(TenantTokenCap { tenant: "fuzz", max_tokens: 64 }),
    };
    let result = parse_json::<serde_json::Value>(body).and_then(|v| validate::body(endpoint, v, &limits));
    match result {
        Ok(req) => {
            assert!(!req.prompts.is_empty() && req.n >= 1);
            for (p, max_new) in req.prompts.iter().zip(&req.max_new_tokens) {
                assert!(*max_new >= 1 && p.ids.len() + max_new <= limits.max_context);
            }
        }
        Err(e) => {
            let status = e.status.as_u16();
            assert!((400..500).contains(&status), "a bad body answered {status}: {e:?}");
        }
    }
});
