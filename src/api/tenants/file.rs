//! The tenants file (`--tenants FILE`, TOML): its format, and turning it into a
//! validated `TenantTable`. Every error names the file, and the line and column
//! of the offending entry, so a bad file is fixed without guessing.
//!
//! The raw entries hold keys in clear text and so deliberately derive no `Debug`:
//! nothing can print them into a log. Only digests leave this module.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::ledger::Rates;
use super::table::{KeyDigest, Tenant, TenantTable, Tier, ANONYMOUS};

#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read the tenants file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<Spanned<TenantEntry>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum TierName {
    Provisioned,
    OnDemand,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    name: String,
    api_key: Option<String>,
    /// The name of an environment variable holding the key, so the file itself
    /// need not be secret.
    api_key_env: Option<String>,
    tier: TierName,
    input_tokens_per_minute: Option<u64>,
    output_tokens_per_minute: Option<u64>,
    max_concurrent_requests: Option<usize>,
    max_tokens_per_request: Option<usize>,
    weight: Option<u32>,
}

/// The most a tenant's fair-share weight may be: enough for any sensible ratio,
/// small enough that weights times queue lengths cannot overflow a scheduler's sums.
const MAX_WEIGHT: u32 = 1000;

/// Reads and validates `path`; keys named by `api_key_env` come from the process
/// environment.
pub fn load(path: &Path) -> Result<Vec<Tenant>, TenantsError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TenantsError::Read { path: path.into(), source })?;
    parse(&text, path, |var| std::env::var(var).ok())
}

/// Reads and validates the text of a tenants file; `env` looks up `api_key_env`.
pub fn parse(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Tenant>, TenantsError> {
    let at = |span: Range<usize>, message: String| {
        let (line, column) = line_and_column(text, span.start);
        TenantsError::Invalid { path: path.into(), line, column, message }
    };
    let file: TenantsFile =
        toml::from_str(text).map_err(|e| at(e.span().unwrap_or(0..0), e.message().to_string()))?;
    let mut names = HashSet::new();
    let mut digests: Vec<(String, [u8; 32])> = Vec::new();
    let mut tenants = Vec::new();
    for entry in file.tenants {
        let span = entry.span();
        let entry = entry.into_inner();
        let tenant = tenant_of(entry, &env).map_err(|m| at(span.clone(), m))?;
        if !names.insert(tenant.name.clone()) {
            return Err(at(span, format!("tenant name `{}` appears more than once", tenant.name)));
        }
        let digest = tenant.key.as_ref().map(KeyDigest::bytes).unwrap_or_default();
        if let Some((other, _)) = digests.iter().find(|(_, d)| *d == digest) {
            return Err(at(
                span,
                format!("tenant `{}` has the same API key as tenant `{other}`", tenant.name),
            ));
        }
        digests.push((tenant.name.clone(), digest));
        tenants.push(tenant);
    }
    Ok(tenants)
}

/// Loads `path` as the whole tenant table.
pub fn load_table(path: &Path) -> Result<TenantTable, TenantsError> {
    load(path).map(TenantTable::new)
}

fn tenant_of(e: TenantEntry, env: &impl Fn(&str) -> Option<String>) -> Result<Tenant, String> {
    check_name(&e.name)?;
    let name = e.name;
    let key = match (e.api_key, e.api_key_env) {
        (Some(_), Some(_)) => {
            return Err(format!("tenant `{name}`: give `api_key` or `api_key_env`, not both"))
        }
        (None, None) => return Err(format!("tenant `{name}`: needs `api_key` or `api_key_env`")),
        (Some(k), None) => k,
        (None, Some(var)) => env(&var).ok_or_else(|| {
            format!("tenant `{name}`: environment variable `{var}` (api_key_env) is not set")
        })?,
    };
    if key.trim().is_empty() {
        return Err(format!("tenant `{name}`: the API key is empty"));
    }
    let rates = match (e.input_tokens_per_minute, e.output_tokens_per_minute) {
        (Some(i), Some(o)) if i > 0 && o > 0 => {
            Some(Rates { input_tokens_per_minute: i, output_tokens_per_minute: o })
        }
        (None, None) => None,
        _ => {
            return Err(format!(
                "tenant `{name}`: give input_tokens_per_minute and output_tokens_per_minute together, both above 0"
            ))
        }
    };
    let (tier, on_demand_cap) = match (e.tier, rates) {
        (TierName::OnDemand, cap) => (Tier::OnDemand, cap),
        (TierName::Provisioned, Some(r)) => (
            Tier::Provisioned {
                input_tokens_per_minute: r.input_tokens_per_minute,
                output_tokens_per_minute: r.output_tokens_per_minute,
            },
            None,
        ),
        (TierName::Provisioned, None) => {
            return Err(format!(
                "tenant `{name}`: a provisioned tenant needs input_tokens_per_minute and output_tokens_per_minute, both above 0"
            ))
        }
    };
    let weight = e.weight.unwrap_or(1);
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(format!("tenant `{name}`: weight must be 1 to {MAX_WEIGHT}, got {weight}"));
    }
    if e.max_concurrent_requests == Some(0) || e.max_tokens_per_request == Some(0) {
        return Err(format!(
            "tenant `{name}`: max_concurrent_requests and max_tokens_per_request must be above 0"
        ));
    }
    Ok(Tenant {
        key: Some(KeyDigest::of(key.trim())),
        tier,
        max_concurrent_requests: e.max_concurrent_requests,
        max_tokens_per_request: e.max_tokens_per_request,
        on_demand_cap,
        weight,
        name,
        // The table assigns the share key and the ledger.
        ..Tenant::anonymous()
    })
}

/// Names become metric labels: keep them short and plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !plain || name.is_empty() || name.len() > 64 {
        return Err(format!("tenant name `{name}` must be 1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`"));
    }
    if name == ANONYMOUS {
        return Err(format!("tenant name `{ANONYMOUS}` is reserved for unauthenticated requests"));
    }
    Ok(())
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Tenant>, TenantsError> {
        parse(text, Path::new("tenants.toml"), |v| (v == "ACME_KEY").then(|| "sk-from-env".to_string()))
    }

    fn error_of(text: &str) -> String {
        match parse_str(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const TWO: &str = r#"
[[tenants]]
name = "acme"
api_key_env = "ACME_KEY"
tier = "provisioned"
input_tokens_per_minute = 20000
output_tokens_per_minute = 5000
max_concurrent_requests = 16
max_tokens_per_request = 2048

[[tenants]]
name = "globex"
api_key = "sk-globex"
tier = "on-demand"
"#;

    #[test]
    fn a_good_file_gives_typed_tenants() {
        let tenants = parse_str(TWO).expect("parses");
        assert_eq!(tenants.len(), 2);
        let acme = &tenants[0];
        assert_eq!(acme.name, "acme");
        assert_eq!(
            acme.tier,
            Tier::Provisioned { input_tokens_per_minute: 20000, output_tokens_per_minute: 5000 }
        );
        assert_eq!((acme.max_concurrent_requests, acme.max_tokens_per_request), (Some(16), Some(2048)));
        assert_eq!(tenants[1].tier, Tier::OnDemand);
        assert_eq!((tenants[1].on_demand_cap, tenants[1].weight), (None, 1));
        let table = TenantTable::new(tenants);
        assert!(
            matches!(table.authenticate(Some("sk-from-env")), super::super::table::Authenticated::Tenant(t) if t.name == "acme")
        );
    }

    #[test]
    fn an_on_demand_tenant_may_have_a_cap_and_a_weight() {
        let text = "[[tenants]]\nname = \"o\"\napi_key = \"k\"\ntier = \"on-demand\"\n\
                    input_tokens_per_minute = 600\noutput_tokens_per_minute = 300\nweight = 4\n";
        let tenants = parse_str(text).expect("parses");
        let cap = Rates { input_tokens_per_minute: 600, output_tokens_per_minute: 300 };
        assert_eq!(
            (tenants[0].tier, tenants[0].on_demand_cap, tenants[0].weight),
            (Tier::OnDemand, Some(cap), 4)
        );
        assert_eq!(tenants[0].rates(), Some(cap));
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let e = error_of("[[tenants]]\nname = \"acme\"\napi_key = \n");
        assert!(e.starts_with("tenants.toml:3:"), "{e}");
    }

    #[test]
    fn unknown_fields_and_tiers_are_refused_with_their_line() {
        let e = error_of("[[tenants]]\nname = \"a\"\napi_key = \"k\"\ntier = \"on-demand\"\nmax_rps = 3\n");
        assert!(e.starts_with("tenants.toml:5:") && e.contains("max_rps"), "{e}");
        let e = error_of("[[tenants]]\nname = \"a\"\napi_key = \"k\"\ntier = \"gold\"\n");
        assert!(e.starts_with("tenants.toml:4:") && e.contains("gold"), "{e}");
    }

    #[test]
    fn validation_errors_say_what_and_where() {
        let entry = |name: &str, key: &str, extra: &str| {
            format!("[[tenants]]\nname = \"{name}\"\napi_key = \"{key}\"\ntier = \"on-demand\"\n{extra}\n")
        };
        let dup_name = entry("a", "k1", "") + &entry("a", "k2", "");
        assert!(error_of(&dup_name).contains("appears more than once"));
        let dup_key = entry("a", "k1", "") + &entry("b", "k1", "");
        let e = error_of(&dup_key);
        assert!(e.starts_with("tenants.toml:6:") && e.contains("same API key"), "{e}");
        assert!(error_of(&entry("bad name", "k", "")).contains("1 to 64 characters"));
        assert!(error_of(&entry(&"x".repeat(65), "k", "")).contains("1 to 64 characters"));
        assert!(error_of(&entry("anonymous", "k", "")).contains("reserved"));
        assert!(error_of(&entry("a", "  ", "")).contains("empty"));
        assert!(error_of(&entry("a", "k", "max_concurrent_requests = 0")).contains("above 0"));
        let provisioned = "[[tenants]]\nname = \"p\"\napi_key = \"k\"\ntier = \"provisioned\"\ninput_tokens_per_minute = 10\n";
        assert!(
            error_of(provisioned).contains("input_tokens_per_minute and output_tokens_per_minute together")
        );
        let provisioned = "[[tenants]]\nname = \"p\"\napi_key = \"k\"\ntier = \"provisioned\"\n";
        assert!(error_of(provisioned).contains("a provisioned tenant needs"));
        assert!(error_of(&entry("a", "k", "weight = 0")).contains("weight must be 1 to 1000"));
        assert!(error_of(&entry("a", "k", "input_tokens_per_minute = 0\noutput_tokens_per_minute = 5"))
            .contains("both above 0"));
        let both =
            "[[tenants]]\nname = \"p\"\napi_key = \"k\"\napi_key_env = \"ACME_KEY\"\ntier = \"on-demand\"\n";
        assert!(error_of(both).contains("not both"));
        let unset = "[[tenants]]\nname = \"p\"\napi_key_env = \"UNSET_VAR\"\ntier = \"on-demand\"\n";
        assert!(error_of(unset).contains("`UNSET_VAR`"));
    }

    #[test]
    fn an_error_never_quotes_a_key() {
        let text = "[[tenants]]\nname = \"a\"\napi_key = \"sk-secret-1\"\ntier = \"on-demand\"\n\
                    [[tenants]]\nname = \"b\"\napi_key = \"sk-secret-1\"\ntier = \"on-demand\"\n";
        assert!(!error_of(text).contains("sk-secret-1"));
    }
}
