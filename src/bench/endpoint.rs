//! Which OpenAI endpoint a run targets: completions (a prompt) or chat (messages
//! the server renders with its chat template). `workload` shapes its inputs for
//! it, `client` posts to its path, and the results file records it. It uses no
//! other bench module, so both sides of a request can depend on it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/v1/completions` (a prompt).
    Completions,
    /// `/v1/chat/completions` (messages, rendered by the server's chat template).
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}
