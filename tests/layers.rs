//! The layer rule of ARCHITECTURE.md, checked on the source: every path a module
//! names (`crate::…`, `inflight::…`, `super::…`, grouped `use` trees included)
//! must point to its own module or to a lower layer, the backend trait must not
//! know its implementations, the CPU kernels must not reach up into the forward
//! pass, and no two sibling modules may import each other (directly or round a
//! loop). Test modules are left out: they may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, top first. A module may import from its own top-level module and from
/// any layer below its own, never from its own layer's other modules or above.
const LAYERS: &[&[&str]] = &[
    &["binary"],       // src/main.rs, src/cli.rs, src/commands/: flags → configs
    &["testing"],      // support for tests, imported only by them
    &["api", "bench"], // HTTP server; benchmark client (uses nothing of the engine)
    &["runtime"],
    &["engine"],
    &["backend"],
    &["model"],
    &["metrics", "tokenizer", "hub"],
    &["fastexp"],
];

/// Narrower rules inside one layer: modules under the first path (other than those
/// under the second) must not import the second.
const FORBIDDEN_WITHIN: &[(&str, &str)] = &[
    // The trait, step types and validation know no implementation, and no
    // implementation another's.
    ("backend", "backend::cpu"),
    ("backend", "backend::cuda"),
    ("backend", "backend::neuron"),
    // Kernels are the bottom of the CPU backend.
    ("backend::cpu::kernels", "backend::cpu::llama"),
    ("backend::cpu::kernels", "backend::cpu::attention"),
    ("backend::cpu::kernels", "backend::cpu::linear"),
    ("backend::cpu::kernels", "backend::cpu::kv_cache"),
    ("backend::cpu::kernels", "backend::cpu::elementwise"),
];

fn rank(top: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&top))
}

/// One source file: its module path and the absolute paths it names.
struct SourceFile {
    file: PathBuf,
    module: Vec<String>,
    paths: Vec<Vec<String>>,
}

fn src_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `[a, b]`; `src/a/mod.rs` → `[a]`; the binary's files → `[binary, …]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    if matches!(parts.first().map(String::as_str), Some("main" | "cli" | "commands")) {
        parts.insert(0, "binary".into());
    }
    parts
}

/// The file's code without comments, string literals and `#[cfg(test)]` items.
fn code_of(text: &str) -> String {
    let (b, mut out, mut i) = (text.as_bytes(), String::with_capacity(text.len()), 0);
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            i += text[i..].find('\n').unwrap_or(text.len() - i);
        } else if b[i..].starts_with(b"/*") {
            i += text[i..].find("*/").map_or(text.len() - i, |e| e + 2);
        } else if b[i] == b'"' {
            // Skip to the closing quote, stepping over escapes.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal such as '{'
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    without_test_items(&out)
}

/// Drops each `#[cfg(test)]` item: up to its `;`, or through its braced body.
fn without_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTR.len()..];
        let end = match item.find(['{', ';']) {
            Some(j) if item.as_bytes()[j] == b'{' => {
                let mut depth = 0usize;
                let close = item[j..].char_indices().find(|&(_, c)| {
                    depth = match c {
                        '{' => depth + 1,
                        '}' => depth - 1,
                        _ => depth,
                    };
                    c == '}' && depth == 0
                });
                close.map_or(item.len(), |(k, _)| j + k + 1)
            }
            Some(j) => j + 1,
            None => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Parses a path (tree) at `b[*i..]`, after its root, into full segment lists.
fn parse_tree(b: &[u8], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut path = prefix;
    loop {
        skip_ws(i);
        if *i < b.len() && b[*i] == b'{' {
            *i += 1;
            loop {
                skip_ws(i);
                if *i >= b.len() || b[*i] == b'}' {
                    *i += 1;
                    return;
                }
                parse_tree(b, i, path.clone(), out);
                skip_ws(i);
                if *i < b.len() && b[*i] == b',' {
                    *i += 1;
                }
            }
        }
        let start = *i;
        while *i < b.len() && is_ident(b[*i]) {
            *i += 1;
        }
        if start == *i {
            // `*`, `self` handled as the path so far.
            if *i < b.len() && b[*i] == b'*' {
                *i += 1;
            }
            out.push(path);
            return;
        }
        let seg = String::from_utf8_lossy(&b[start..*i]).into_owned();
        if seg != "self" {
            path.push(seg);
        }
        if b[*i..].starts_with(b"::") {
            *i += 2;
        } else {
            out.push(path);
            return;
        }
    }
}

/// Every absolute module path the code names, resolved from `module`.
fn named_paths(code: &str, module: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let binary = module.first().is_some_and(|m| m == "binary");
    let mut out = Vec::new();
    for root in ["crate::", "inflight::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(root) {
            let start = from + at;
            from = start + root.len();
            if start > 0 && (is_ident(b[start - 1]) || b[start - 1] == b':') {
                continue;
            }
            let prefix = match root {
                "crate::" if binary => vec!["binary".to_string()],
                "crate::" | "inflight::" => Vec::new(),
                _ => {
                    // `super` of a non-mod file is its directory's module.
                    let mut base = module.to_vec();
                    if !is_mod_file || base.is_empty() {
                        base.pop();
                    }
                    let mut i = from;
                    while b[i..].starts_with(b"super::") {
                        base.pop();
                        i += "super::".len();
                    }
                    from = i;
                    base
                }
            };
            let mut i = from;
            parse_tree(b, &mut i, prefix, &mut out);
        }
    }
    out
}

fn sources() -> Vec<SourceFile> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("read source");
            let module = module_path(&file);
            let is_mod_file = file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs");
            let paths = named_paths(&code_of(&text), &module, is_mod_file);
            SourceFile { file, module, paths }
        })
        .collect()
}

/// Whether module path `path` is `prefix` or inside it.
fn inside(path: &str, prefix: &str) -> bool {
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with("::"))
}

fn joined(p: &[String]) -> String {
    p.join("::")
}

/// The violations of the layer rules in `files`, one line each.
fn layer_violations(files: &[SourceFile]) -> Vec<String> {
    let mut bad = Vec::new();
    for f in files {
        let Some(own) = f.module.first() else { continue };
        let Some(own_rank) = rank(own) else {
            bad.push(format!("{}: module `{own}` is in no layer", f.file.display()));
            continue;
        };
        let importer = joined(&f.module);
        for p in &f.paths {
            let Some(top) = p.first() else { continue };
            let ok = match rank(top) {
                _ if top == own => true,
                Some(r) => r > own_rank,
                None => true, // an item of the crate root, not a module
            };
            if !ok {
                bad.push(format!(
                    "{}: `{importer}` imports `{}` from a layer above or beside it",
                    f.file.display(),
                    joined(p)
                ));
            }
            let target = joined(p);
            for (from, to) in FORBIDDEN_WITHIN {
                if inside(&importer, from) && !inside(&importer, to) && inside(&target, to) {
                    bad.push(format!("{}: `{importer}` must not import `{target}`", f.file.display()));
                }
            }
        }
    }
    bad
}

/// Cycles between sibling modules: `a::x` naming `a::y` while `a::y` (or a loop
/// through other children of `a`) names `a::x`.
fn sibling_cycles(files: &[SourceFile]) -> Vec<String> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let is_module = |p: &[String]| modules.iter().any(|m| m.starts_with(p));
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in files {
        for p in &f.paths {
            let Some(d) = (0..f.module.len().min(p.len())).find(|&d| f.module[d] != p[d]) else {
                continue; // a path into the file's own module or its parents
            };
            let (from, to) = (f.module[..=d].to_vec(), p[..=d].to_vec());
            if is_module(&to) {
                edges.entry(from).or_default().insert(to);
            }
        }
    }
    let mut cycles = BTreeSet::new();
    for (a, targets) in &edges {
        for b in targets {
            // Is `a` reachable from `b`?
            let (mut seen, mut stack) = (BTreeSet::new(), vec![b.clone()]);
            while let Some(n) = stack.pop() {
                if &n == a {
                    let mut pair = [joined(a), joined(b)];
                    pair.sort();
                    cycles.insert(format!("`{}` and `{}` import each other", pair[0], pair[1]));
                    break;
                }
                if seen.insert(n.clone()) {
                    stack.extend(edges.get(&n).into_iter().flatten().cloned());
                }
            }
        }
    }
    cycles.into_iter().collect()
}

#[test]
fn every_module_imports_only_from_lower_layers() {
    let files = sources();
    assert!(files.len() > 50, "found only {} source files", files.len());
    // The parser must see the imports the rule is about, grouped trees included.
    let engine_core = files.iter().find(|f| f.module == ["engine", "core"]).expect("engine/core.rs");
    assert!(
        engine_core.paths.iter().any(|p| p.starts_with(&["backend".to_string()])),
        "{:?}",
        engine_core.paths
    );
    let bad = layer_violations(&files);
    assert!(bad.is_empty(), "layer rule broken:\n{}", bad.join("\n"));
}

#[test]
fn no_sibling_modules_import_each_other() {
    let cycles = sibling_cycles(&sources());
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let file = |module: &[&str], code: &str| {
        let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        let paths = named_paths(&code_of(code), &module, false);
        SourceFile { file: PathBuf::from(module.join("/")), module, paths }
    };
    let upward = file(&["engine", "sampling"], "use crate::{tokenizer::X, api::{state::S, Y}};\n");
    assert_eq!(layer_violations(&[upward]).len(), 2, "engine → api::state::S and api::Y");
    let beside = file(&["metrics"], "fn f(_: crate::hub::Registry) {}\n");
    assert_eq!(layer_violations(&[beside]).len(), 1, "metrics → hub (same layer)");
    let into_impl = file(&["backend", "step"], "use super::cpu::Llama;\n");
    assert_eq!(layer_violations(&[into_impl]).len(), 1, "backend trait → cpu");
    let up_in_cpu = file(&["backend", "cpu", "kernels", "tile"], "use super::super::llama::Llama;\n");
    assert_eq!(layer_violations(&[up_in_cpu]).len(), 1, "kernels → forward pass");
    let fine = file(
        &["backend", "cpu", "llama"],
        "use super::kernels::Q; use crate::model::{config::C, rope};\n// crate::api\n",
    );
    assert!(layer_violations(&[fine]).is_empty());
    let tests_only = file(
        &["model", "rope"],
        "#[cfg(test)]\nmod helpers;\n#[cfg(test)]\npub(crate) mod tests { fn f() { use crate::engine::X; } }\nuse crate::api::Y;",
    );
    assert_eq!(
        layer_violations(&[tests_only]).len(),
        1,
        "test items may use anything; the code after them may not"
    );

    let a = file(&["bench", "client"], "use super::workload::W;\n");
    let b = file(&["bench", "workload"], "use super::{stats, client::C};\n");
    let c = file(&["bench", "stats"], "use crate::bench::record::R;\n");
    let d = file(&["bench", "record"], "\n");
    assert_eq!(
        sibling_cycles(&[a, b, c, d]),
        vec!["`bench::client` and `bench::workload` import each other"]
    );
}
