//! Renders a model's Jinja chat template (the Hugging Face convention) with minijinja.
//!
//! The environment matches what `transformers` gives templates: `trim_blocks` and
//! `lstrip_blocks` on, Python string/dict methods (`.strip()`, `.items()`...) through
//! minijinja-contrib's pycompat, `raise_exception`, and `bos_token` / `eos_token` /
//! `add_generation_prompt` / `messages` in the context. A template that fails to
//! compile does not stop the model from loading: only chat requests fail, with the
//! compile error.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use super::TokenizerError;

const NAME: &str = "chat";

/// One message of a conversation, as the chat template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub(crate) struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    /// Why the template did not compile, if it did not.
    compile_error: Option<String>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub(crate) fn new(source: String, bos_token: String, eos_token: String) -> Self {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let compile_error = env.add_template_owned(NAME, source.clone()).err().map(|e| describe(&e));
        ChatTemplate { source, env, compile_error, bos_token, eos_token }
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        if let Some(e) = &self.compile_error {
            return Err(TokenizerError::ChatTemplate(format!("does not compile: {e}")));
        }
        let template = self.env.get_template(NAME).map_err(|e| TokenizerError::ChatTemplate(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| TokenizerError::ChatTemplate(describe(&e)))
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

    #[test]
    fn a_template_that_does_not_compile_fails_at_render_time() {
        match render("{% for m in messages %}", &[msg("user", "x")]) {
            Err(TokenizerError::ChatTemplate(m)) => assert!(m.contains("does not compile"), "{m}"),
            other => panic!("expected a template error, got {other:?}"),
        }
    }
}
