//! `GET /openapi.json`: the OpenAPI 3.1 document of every route the router serves,
//! with request and response bodies, the error body, and each route's statuses.
//! The document is kept as JSON beside this file; a test checks that it names
//! exactly the routes `server::router` serves. As served, it also names this
//! server's model and vocabulary, so a client generating requests from it (a
//! property-based tester, say) reaches the model rather than a 404.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::state::AppState;

/// The document without this server's particulars.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document(State(state): State<AppState>) -> Response {
    let vocab_size = state.ready.get().map(|r| r.tokenizer.vocab_size());
    Json(for_server(&state.config.served_model, vocab_size)).into_response()
}

/// The document for a server serving `served_model` with `vocab_size` tokens
/// (unknown while the model loads).
pub fn for_server(served_model: &str, vocab_size: Option<usize>) -> Value {
    let mut doc: Value = serde_json::from_str(DOCUMENT).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    schemas["ModelName"]["enum"] = json!([served_model]);
    if let Some(n) = vocab_size.filter(|&n| n > 0) {
        schemas["TokenId"]["maximum"] = json!(n - 1);
    }
    doc
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(path, method)` of every `.route("PATH", METHOD(...))` in the router's source.
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("server.rs");
        let mut out = BTreeSet::new();
        for call in source.split(".route(").skip(1) {
            let mut quoted = call.splitn(3, '"');
            let (Some(_), Some(path)) = (quoted.next(), quoted.next()) else { continue };
            let rest = quoted.next().unwrap_or_default().trim_start_matches([',', ' ', '\n']);
            let method = rest.split('(').next().unwrap_or_default().trim();
            out.insert((path.to_string(), method.to_string()));
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object().expect("operations").keys().map(move |m| (path.clone(), m.clone()))
            })
            .collect()
    }

    #[test]
    fn the_document_lists_exactly_the_routes_the_router_serves() {
        let routed = routed();
        assert!(routed.len() >= 9, "found too few routes in server.rs: {routed:?}");
        assert_eq!(documented(), routed, "documented (left) and routed (right) differ");
    }

    #[test]
    fn the_served_document_names_the_model_and_the_vocabulary() {
        let doc = for_server("smol", Some(100));
        assert_eq!(doc["components"]["schemas"]["ModelName"]["enum"], json!(["smol"]));
        assert_eq!(doc["components"]["schemas"]["TokenId"]["maximum"], json!(99));
        assert_eq!(doc["openapi"], "3.1.0");
    }

    #[test]
    fn every_operation_documents_its_error_body() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("JSON");
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.contains_key("200"), "{method} {path} has no 200");
                for (status, r) in responses.iter().filter(|(s, _)| !s.starts_with('2')) {
                    let schema = &r["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorResponse", "{method} {path} {status}");
                }
            }
        }
    }
}
