//! Hostile chat templates rendered the way the server renders them: in worker
//! processes (the real `inflight` binary) bounded in memory and time. Each bomb must
//! end as an error for its own render, and the next render must work.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use inflight::tokenizer::{ChatMessage, ChatTemplate, SandboxLimits, TemplateSandbox, TokenizerError};

const PLAIN: &str =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                     {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_inflight"))
}

fn limits() -> SandboxLimits {
    SandboxLimits { memory_bytes: 512 << 20, timeout: Duration::from_secs(2) }
}

fn user(content: &str) -> Vec<ChatMessage> {
    vec![ChatMessage { role: "user".into(), content: content.into() }]
}

fn isolated(source: &str) -> (ChatTemplate, TemplateSandbox) {
    let template = ChatTemplate::new(source.into(), "<s>".into(), "</s>".into());
    let sandbox = TemplateSandbox::new(exe(), &template, limits(), 1);
    (template, sandbox)
}

fn error_of(result: Result<String, TokenizerError>) -> String {
    match result {
        Err(TokenizerError::ChatTemplate(m)) => m,
        other => panic!("expected a chat template error, got {other:?}"),
    }
}

#[test]
fn a_worker_renders_what_the_template_renders_in_process() {
    let (template, sandbox) = isolated(PLAIN);
    for messages in [user("Hello"), user("quotes \" and \\ and\nnewlines, ünïcödé")] {
        let here = template.render(&messages, true).expect("renders in process");
        assert_eq!(sandbox.render(&messages, true).expect("renders in a worker"), here);
    }
    let (_, broken) = isolated("{% for m in messages %}{{ m.content }");
    assert!(error_of(broken.render(&user("x"), true)).contains("does not compile"));
    let (_, raising) = isolated("{{ raise_exception('roles must alternate') }}");
    assert!(error_of(raising.render(&user("x"), true)).contains("roles must alternate"));
}

/// The fuzzing finding of 2026-12-04: `~` doubles a string in a loop, bounded by
/// neither fuel nor the output limit. In the worker it meets the address-space
/// bound; the next render gets a fresh worker.
#[test]
fn a_doubling_template_stops_at_the_memory_bound_and_the_next_render_works() {
    let source = format!(
        "{{% if messages[0].content == 'boom' %}}{{% set ns = namespace(s='ab') %}}\
         {{% for i in range(40) %}}{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}{{{{ ns.s|length }}}}\
         {{% else %}}{PLAIN}{{% endif %}}"
    );
    let (_, sandbox) = isolated(&source);
    for _ in 0..2 {
        let message = error_of(sandbox.render(&user("boom"), true));
        assert!(message.contains("memory bound of 512 MiB"), "{message}");
        let ok = sandbox.render(&user("fine"), true).expect("a fresh worker renders");
        assert!(ok.contains("fine"), "{ok}");
    }
}

/// minijinja folds constant expressions when it compiles, `~` included: this
/// template builds gigabytes before its first render, so the server must not
/// compile it either (`ChatTemplate::new` does not compile).
#[test]
fn a_template_that_explodes_while_compiling_is_bounded_too() {
    let big = "('ab' * 40000000)";
    let source = format!("{{{{ {} }}}}", vec![big; 64].join(" ~ "));
    let template = ChatTemplate::new(source, "<s>".into(), "</s>".into());
    let sandbox = TemplateSandbox::new(exe(), &template, limits(), 1);
    let message = error_of(sandbox.render(&user("x"), true));
    assert!(message.contains("memory bound"), "{message}");
}

#[test]
fn a_render_past_its_deadline_is_killed() {
    // Each pass copies 40 MB: within the fuel, far beyond the deadline.
    let source = "{% set s = 'ab' * 10000000 %}{% for i in range(100000) %}{% set t = s ~ s %}{% endfor %}";
    let (_, sandbox) = isolated(source);
    let start = Instant::now();
    let message = error_of(sandbox.render(&user("x"), true));
    assert!(message.contains("longer than 2.0 s"), "{message}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the deadline was not enforced: {:?}",
        start.elapsed()
    );
}
