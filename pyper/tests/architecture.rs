//! The layers of ARCHITECTURE.md, checked: each layer of `src/` imports only from the
//! layers below it (doc comments aside, which only link).

use std::path::{Path, PathBuf};

/// The layers from the bottom up, each with the module paths (relative to `src/`) it owns.
const LAYERS: &[(&str, &[&str])] = &[
    ("errors", &["error.rs"]),
    ("engine", &["engine"]),
    ("stage", &["stage"]),
    ("observe", &["observe"]),
    ("api", &["task", "pipeline.rs", "output", "lib.rs"]),
];

/// What each layer may import, besides itself.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "errors" => &[],
        "engine" => &["errors"],
        "stage" => &["errors", "engine"],
        "observe" => &["errors", "engine"],
        "api" => &["errors", "engine", "stage", "observe"],
        _ => unreachable!(),
    }
}

/// The layer a `crate::…` path points into.
fn layer_of_path(path: &str) -> Option<&'static str> {
    let first = path.split("::").next().filter(|first| !first.is_empty())?;
    match first {
        "error" | "Error" | "ErrorKind" | "BoxError" => Some("errors"),
        "engine" => Some("engine"),
        "stage" => Some("stage"),
        "observe" => Some("observe"),
        "task" | "pipeline" | "output" => Some("api"),
        // Anything else is something the root re-exports: the public API.
        _ => Some("api"),
    }
}

fn layer_of_file(relative: &Path) -> &'static str {
    let text = relative.to_string_lossy();
    LAYERS
        .iter()
        .find(|(_, owned)| {
            owned
                .iter()
                .any(|owned| text == *owned || text.starts_with(&format!("{owned}/")))
        })
        .map(|(layer, _)| *layer)
        .unwrap_or_else(|| panic!("{text} belongs to no layer of ARCHITECTURE.md"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::…` path in `source`'s code (doc comments, line comments and macros'
/// `$crate::` skipped).
fn crate_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            // `$crate::` in a macro resolves in the crate that calls it.
            if rest[..at].ends_with('$') {
                rest = after;
                continue;
            }
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            let path = &after[..end];
            if path.is_empty() {
                // `use crate::{a, b}`: the names inside the braces are the paths.
                if let Some(group) = after.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or("");
                    paths.extend(group.split(',').map(|name| name.trim().to_owned()));
                }
            } else {
                paths.push(path.to_owned());
            }
            rest = &after[end..];
        }
    }
    paths
}

#[test]
fn each_layer_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let layer = layer_of_file(relative);
        let source = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&source) {
            let Some(target) = layer_of_path(&path) else {
                continue;
            };
            if target != layer && !allowed(layer).contains(&target) {
                violations.push(format!(
                    "{} ({layer}) imports crate::{path} ({target})",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_paths_in_use_lists_and_in_code() {
    let source = "use crate::{engine::queue, task::Task};\n/// crate::observe in a doc\nlet x = crate::stage::Body::Invalid(\"\");";
    assert_eq!(
        crate_paths(source),
        ["engine::queue", "task::Task", "stage::Body::Invalid"]
    );
}
