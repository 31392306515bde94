//! Hostile chat templates, as a GGUF's `tokenizer.chat_template` may carry: the
//! input is a template, a NUL, then a message's content. The template is rendered
//! with the server's own `ChatTemplate` (its fuel, recursion and output bounds) on a
//! thread with tokio's 2 MiB stack, in process so that libFuzzer sees the renderer's
//! coverage. Rendering must end in text or an error within the bounds; a crash, a
//! stack overflow or a hang (caught by libFuzzer's `-timeout`) is a finding. Memory
//! is not bounded in process (the server renders in bounded worker processes,
//! `tokenizer::template_sandbox`), so `run.sh` runs this target with `-ignore_ooms`.
#![no_main]

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use inflight::tokenizer::{ChatMessage, ChatTemplate, MAX_RENDERED_BYTES};
use libfuzzer_sys::fuzz_target;

type Job = (String, String, mpsc::Sender<Option<usize>>);

/// One long-lived renderer thread: spawning one per input would dominate the run.
fn renderer() -> &'static Mutex<mpsc::Sender<Job>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for (source, content, reply) in rx {
                    let template = ChatTemplate::new(source, "<|im_start|>".into(), "<|im_end|>".into());
                    let messages = [
                        ChatMessage { role: "system".into(), content: "You are helpful.".into() },
                        ChatMessage { role: "user".into(), content },
                    ];
                    let rendered = template.render(&messages, true).ok().map(|s| s.len());
                    let _ = reply.send(rendered);
                }
            })
            .expect("spawn the renderer thread");
        Mutex::new(tx)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (source, content) = text.split_once('\0').unwrap_or((text, "hello"));
    let (reply_tx, reply_rx) = mpsc::channel();
    renderer()
        .lock()
        .expect("renderer lock")
        .send((source.to_owned(), content.to_owned(), reply_tx))
        .expect("renderer alive");
    if let Some(len) = reply_rx.recv().expect("renderer answered") {
        assert!(len <= MAX_RENDERED_BYTES, "rendered {len} bytes");
    }
});
