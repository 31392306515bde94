//! Renders a model's Jinja chat template (the Hugging Face convention) with minijinja.
//!
//! The environment matches what `transformers` gives templates: `trim_blocks` and
//! `lstrip_blocks` on, Python string/dict methods (`.strip()`, `.items()`...) through
//! minijinja-contrib's pycompat, `raise_exception`, and `bos_token` / `eos_token` /
//! `add_generation_prompt` / `messages` in the context. A template that fails to
//! compile does not stop the model from loading: only chat requests fail, with the
//! compile error.
//!
//! A template comes from the model file, so it may be hostile: rendering is bounded
//! in instructions (minijinja's fuel), in depth (its recursion limit) and in output
//! bytes, and each bound is an error for that request, never a hang or a crash.
//! Memory and time are bounded only in a worker process: the server renders its
//! template there (`template_sandbox.rs`).

use std::io::Write;
use std::sync::OnceLock;

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::TokenizerError;

const NAME: &str = "chat";

/// Instructions one render may execute: the default model's template renders a
/// full 4 MiB body of the shortest messages within it (a unit test in `mod.rs`
/// checks), while a template that loops for ever stops after a bounded time.
pub const RENDER_FUEL: u64 = 20_000_000;

/// Bytes one render may produce: four times the default request-body limit, so a
/// template that repeats each message a few times still fits, and one that
/// multiplies its output stops before it takes the server's memory.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// One message of a conversation, as the chat template sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    source: String,
    /// Compiled on the first render in this process. Compiling runs template code
    /// (minijinja folds constant expressions, `~` included), so a process that
    /// renders in workers never compiles the template itself.
    compiled: OnceLock<Compiled>,
    bos_token: String,
    eos_token: String,
}

struct Compiled {
    env: Environment<'static>,
    /// Why the template did not compile, if it did not.
    error: Option<String>,
}

impl Compiled {
    fn new(source: &str) -> Self {
        let mut env = Environment::new();
        env.set_fuel(Some(RENDER_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let error = env.add_template_owned(NAME, source.to_owned()).err().map(|e| describe(&e));
        Compiled { env, error }
    }
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String) -> Self {
        ChatTemplate { source, compiled: OnceLock::new(), bos_token, eos_token }
    }

    fn compiled(&self) -> &Compiled {
        self.compiled.get_or_init(|| Compiled::new(&self.source))
    }

    /// Compiles the template in this process now (a worker does this before its
    /// first render); `Err` says why it does not compile.
    pub fn compile(&self) -> Result<(), TokenizerError> {
        match &self.compiled().error {
            Some(e) => Err(TokenizerError::ChatTemplate(format!("does not compile: {e}"))),
            None => Ok(()),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders in this process: bounded in instructions, depth and output, not in
    /// memory or time (`template_sandbox.rs` bounds those).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.compile()?;
        let template =
            self.compiled().env.get_template(NAME).map_err(|e| TokenizerError::ChatTemplate(describe(&e)))?;
        let mut out = BoundedOutput { bytes: Vec::new(), limit: MAX_RENDERED_BYTES };
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        template.render_captured_to(ctx, &mut out).map(drop).map_err(|e| {
            TokenizerError::ChatTemplate(if out.overflowed() {
                format!("the rendered prompt exceeds {MAX_RENDERED_BYTES} bytes")
            } else {
                describe(&e)
            })
        })?;
        // minijinja writes whole `str`s, so the bytes are UTF-8; checked all the same.
        String::from_utf8(out.bytes).map_err(|e| TokenizerError::ChatTemplate(e.to_string()))
    }
}

/// A render's output, refusing to grow past `limit` bytes.
struct BoundedOutput {
    bytes: Vec<u8>,
    limit: usize,
}

impl BoundedOutput {
    fn overflowed(&self) -> bool {
        self.limit == 0
    }
}

impl Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            // Marks the overflow for the error message: minijinja reports a write failure.
            self.limit = 0;
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Templates call this to reject a conversation (e.g. roles that do not alternate).
fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The error with its causes, on one line.
fn describe(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        ChatTemplate::new(source.into(), "<s>".into(), "</s>".into()).render(messages, true)
    }

    #[test]
    fn python_methods_and_context_variables_are_available() {
        let t = "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m.content.strip() }}\n\
                 {% endfor %}{% if add_generation_prompt %}>{% endif %}{{ eos_token }}";
        let out = render(t, &[msg("user", "  hi  ")]).expect("renders");
        assert_eq!(out, "<s>[USER] hi\n></s>");
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let t = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}";
        assert_eq!(render(t, &[msg("user", "a"), msg("user", "b")]).expect("renders"), "a\nb\n");
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let t =
            "{% if messages[0].role != 'system' %}{{ raise_exception('roles must alternate') }}{% endif %}";
        match render(t, &[msg("user", "x")]) {
            Err(TokenizerError::ChatTemplate(m)) => assert!(m.contains("roles must alternate"), "{m}"),
            other => panic!("expected a template error, got {other:?}"),
        }
    }

    fn expect_error(source: &str, messages: &[ChatMessage], want: &str) {
        match render(source, messages) {
            Err(TokenizerError::ChatTemplate(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("expected a template error with {want:?}, got {other:?}"),
        }
    }

    /// Renders on a thread with tokio's 2 MiB stack: the server renders on its
    /// blocking pool.
    fn render_on_small_stack(source: &'static str) -> Result<String, TokenizerError> {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || render(source, &[msg("user", "x")]))
            .expect("spawn")
            .join()
            .expect("render thread")
    }

    #[test]
    fn a_template_that_loops_for_ever_runs_out_of_fuel() {
        let t = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        expect_error(t, &[msg("user", "x")], "fuel");
    }

    #[test]
    fn a_template_with_enormous_output_is_cut_off() {
        let t = "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}";
        expect_error(t, &[msg("user", "x")], "exceeds");
    }

    #[test]
    fn a_template_that_recurses_without_end_fails_on_a_small_stack() {
        let t = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        match render_on_small_stack(t) {
            Err(TokenizerError::ChatTemplate(m)) => assert!(m.contains("recursion"), "{m}"),
            other => panic!("expected a recursion error, got {other:?}"),
        }
    }

    #[test]
    fn a_template_that_does_not_compile_fails_at_render_time() {
        match render("{% for m in messages %}", &[msg("user", "x")]) {
            Err(TokenizerError::ChatTemplate(m)) => assert!(m.contains("does not compile"), "{m}"),
            other => panic!("expected a template error, got {other:?}"),
        }
    }
}
