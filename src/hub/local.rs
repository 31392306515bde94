//! What a model spec means: an existing path, a registry name, a Hugging Face id, or
//! a path that is missing. Also resolves existing paths to a GGUF file or a
//! safetensors folder. Touches only the local file system.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{HubError, ModelEntry, Registry, ResolvedModel};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

#[derive(Debug)]
pub(crate) enum Spec<'r> {
    Path(PathBuf),
    Registry(&'r ModelEntry),
    HfRepo { repo: String },
    HfFile { repo: String, file: String },
}

/// Existing paths win over registry names, which win over Hugging Face ids.
pub(crate) fn classify<'r>(spec: &str, registry: &'r Registry) -> Result<Spec<'r>, HubError> {
    let path = Path::new(spec);
    if !spec.is_empty() && path.exists() {
        return Ok(Spec::Path(path.to_path_buf()));
    }
    if let Some(entry) = registry.find(spec) {
        return Ok(Spec::Registry(entry));
    }
    if let Some(id) = parse_hf_id(spec) {
        return Ok(id);
    }
    let hint = if spec.contains('/') || spec.ends_with(".gguf") {
        "no such file or directory".to_string()
    } else {
        let known: Vec<&str> = registry.entries().iter().map(|e| e.name.as_str()).collect();
        format!(
            "not a file, a registry name ({}), nor a Hugging Face id (owner/repo or owner/repo/file.gguf)",
            known.join(", ")
        )
    };
    Err(HubError::NotFound { spec: spec.to_string(), hint })
}

/// `owner/repo` or `owner/repo/path/file.gguf`, with HF's rules for the two names.
fn parse_hf_id(spec: &str) -> Option<Spec<'static>> {
    let parts: Vec<&str> = spec.split('/').collect();
    let name_ok = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if parts.len() < 2 || !name_ok(parts[0]) || !name_ok(parts[1]) {
        return None;
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    if parts.len() == 2 {
        // `dir/model.gguf` is far more likely a mistyped path than a repo named so.
        return (!parts[1].ends_with(".gguf")).then_some(Spec::HfRepo { repo });
    }
    let file = &parts[2..];
    let file_ok = file.iter().all(|p| !p.is_empty() && *p != "." && *p != "..")
        && file.last().is_some_and(|last| last.ends_with(".gguf"));
    file_ok.then(|| Spec::HfFile { repo, file: file.join("/") })
}

/// An existing file must be GGUF (by extension or magic); a folder must hold a
/// compiled artifact `manifest.json`, `config.json` plus safetensors weights, or
/// exactly one `.gguf` file.
pub(crate) fn resolve_existing(path: &Path) -> Result<ResolvedModel, HubError> {
    if path.is_file() {
        return if has_gguf_extension(path) || has_gguf_magic(path) {
            Ok(ResolvedModel::Gguf(path.to_path_buf()))
        } else {
            Err(HubError::Unsupported {
                path: path.to_path_buf(),
                reason: "not a GGUF file (no .gguf extension, no GGUF magic)".into(),
            })
        };
    }
    let mut has_config = false;
    let mut has_manifest = false;
    let mut has_safetensors = false;
    let mut ggufs = Vec::new();
    for item in std::fs::read_dir(path).map_err(HubError::io(path))? {
        let item = item.map_err(HubError::io(path))?;
        let child = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !child.is_file() {
            continue;
        }
        has_config |= name == "config.json";
        has_manifest |= name == "manifest.json";
        has_safetensors |= name.ends_with(".safetensors");
        if has_gguf_extension(&child) {
            ggufs.push(child);
        }
    }
    if has_manifest {
        return Ok(ResolvedModel::Compiled(path.to_path_buf()));
    }
    if has_config && has_safetensors {
        return Ok(ResolvedModel::HfDir(path.to_path_buf()));
    }
    match ggufs.len() {
        1 => Ok(ResolvedModel::Gguf(ggufs.remove(0))),
        0 => Err(HubError::Unsupported {
            path: path.to_path_buf(),
            reason: "folder holds no .gguf file and no config.json with *.safetensors".into(),
        }),
        n => {
            ggufs.sort();
            let names: Vec<String> = ggufs.iter().map(|p| p.display().to_string()).collect();
            Err(HubError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("folder holds {n} .gguf files; name one: {}", names.join(", ")),
            })
        }
    }
}

fn has_gguf_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn has_gguf_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == GGUF_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::builtin().unwrap()
    }

    #[test]
    fn existing_gguf_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"GGUF....").unwrap();
        let spec = file.to_str().unwrap();
        match classify(spec, &registry()).unwrap() {
            Spec::Path(p) => assert_eq!(resolve_existing(&p).unwrap(), ResolvedModel::Gguf(file.clone())),
            other => panic!("{other:?}"),
        }
        // No extension, but the magic says GGUF.
        let bare = dir.path().join("weights");
        std::fs::write(&bare, b"GGUF\x03\x00\x00\x00").unwrap();
        assert_eq!(resolve_existing(&bare).unwrap(), ResolvedModel::Gguf(bare.clone()));
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"hello").unwrap();
        assert!(matches!(resolve_existing(&text), Err(HubError::Unsupported { .. })));
    }

    #[test]
    fn folder_with_one_gguf_or_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("a.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        std::fs::write(dir.path().join("a.gguf.verified"), b"x").unwrap();
        std::fs::write(dir.path().join(".a.gguf.123.partial"), b"x").unwrap();
        assert_eq!(resolve_existing(dir.path()).unwrap(), ResolvedModel::Gguf(gguf));

        std::fs::write(dir.path().join("b.gguf"), b"GGUF").unwrap();
        let err = resolve_existing(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2 .gguf files"), "{err}");

        let hf = tempfile::tempdir().unwrap();
        std::fs::write(hf.path().join("config.json"), b"{}").unwrap();
        std::fs::write(hf.path().join("model.safetensors"), b"").unwrap();
        assert_eq!(resolve_existing(hf.path()).unwrap(), ResolvedModel::HfDir(hf.path().to_path_buf()));

        // Compiled artifacts keep their config and weights beside the manifest.
        std::fs::write(hf.path().join("manifest.json"), b"{}").unwrap();
        assert_eq!(resolve_existing(hf.path()).unwrap(), ResolvedModel::Compiled(hf.path().to_path_buf()));

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(resolve_existing(empty.path()), Err(HubError::Unsupported { .. })));
    }

    #[test]
    fn missing_paths_are_named() {
        for spec in ["/nonexistent/dir/model.gguf", "./model.gguf", "model.gguf", "models/x.gguf", "~/m"] {
            match classify(spec, &registry()) {
                Err(HubError::NotFound { spec: named, hint }) => {
                    assert_eq!(named, spec);
                    assert!(hint.contains("no such file"), "{spec}: {hint}");
                }
                other => panic!("{spec}: {other:?}"),
            }
        }
        let err = classify("nonsense", &registry()).unwrap_err().to_string();
        assert!(err.contains("nonsense") && err.contains("smollm2-135m-instruct-q4_1"), "{err}");
    }

    #[test]
    fn names_and_hub_ids() {
        let registry = registry();
        assert!(matches!(
            classify("smollm2-135m-instruct-q4_1", &registry).unwrap(),
            Spec::Registry(e) if e.name == "smollm2-135m-instruct-q4_1"
        ));
        match classify("HuggingFaceTB/SmolLM2-135M-Instruct", &registry).unwrap() {
            Spec::HfRepo { repo } => assert_eq!(repo, "HuggingFaceTB/SmolLM2-135M-Instruct"),
            other => panic!("{other:?}"),
        }
        match classify("bartowski/Llama-3.2-1B-Instruct-GGUF/sub/Q4.gguf", &registry).unwrap() {
            Spec::HfFile { repo, file } => {
                assert_eq!(repo, "bartowski/Llama-3.2-1B-Instruct-GGUF");
                assert_eq!(file, "sub/Q4.gguf");
            }
            other => panic!("{other:?}"),
        }
        assert!(classify("a/b/../c.gguf", &registry).is_err());
        assert!(classify("a/b/c.bin", &registry).is_err());
    }
}
