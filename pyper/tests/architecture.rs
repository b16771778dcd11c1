//! ARCHITECTURE.md, checked: each layer of `src/` imports only from the layers below it, the
//! stage kinds keep out of each other but for their named shared leaves, every folder of
//! `src/` is in the code map, and no two files import each other in a circle unless the
//! circle is allowed below (and argued in ARCHITECTURE.md).
//!
//! Imports are read from the source: `use` declarations (multi-line, nested groups, `self`,
//! `super::` and child modules resolved against the file's module path, re-exports
//! followed to where the item is defined) and paths written in code (`crate::a::b`,
//! `super::f`). Doc comments, line comments, `$crate::` in macros and `#[cfg(test)]`
//! modules are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers from the bottom up, each with the files or folders (relative to `src/`) it
/// owns.
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

/// The stage kinds: folders of `stage/` that may import nothing of `stage/` but
/// themselves and the shared leaves their entry in [`SHARED_LEAVES`] names.
const KINDS: &[&str] = &["thread", "async_task", "process", "python", "remote"];

/// The shared leaves of `stage/`: what a kind may import of `stage/` besides itself, and
/// which kinds may. A leaf imports no kind and not the dispatcher (`stage/mod.rs`).
const SHARED_LEAVES: &[(&str, &[&str])] = &[
    ("stage/policy.rs", KINDS),
    ("stage/launch.rs", KINDS),
    ("stage/func.rs", KINDS),
    ("stage/workers.rs", &["thread", "async_task"]),
    ("stage/inner.rs", &["thread", "async_task"]),
    ("stage/wire", &["process", "remote"]),
];

/// Circles of files that may stay, each with why. ARCHITECTURE.md says the same.
const ALLOWED_CYCLES: &[(&[&str], &str)] = &[
    (
        &["pipeline.rs", "task/async_task.rs", "task/fork.rs", "task/mod.rs", "task/per_worker.rs", "task/python.rs"],
        "`Task | Task` is a `Pipeline` and a `Pipeline` is made of tasks: the two public types of composition name each other",
    ),
    (
        &["output/inspect.rs", "output/mod.rs", "output/stream.rs"],
        "one public type's faces: an `Output` becomes an `OutputStream` and back, and its `Monitor` reads the run an `Output` holds",
    ),
    (
        &["stage/fork.rs", "stage/mod.rs"],
        "a fork is made of tasks: its body holds its tasks' `Body`s, and the dispatcher's `Body` holds the fork's",
    ),
];

fn layer_of_file(relative: &str) -> &'static str {
    LAYERS
        .iter()
        .find(|(_, owned)| owned.iter().any(|owned| under(relative, owned)))
        .map(|(layer, _)| *layer)
        .unwrap_or_else(|| panic!("{relative} belongs to no layer of ARCHITECTURE.md"))
}

/// Whether `file` is `owned` or inside the folder `owned`.
fn under(file: &str, owned: &str) -> bool {
    file == owned || file.starts_with(&format!("{owned}/"))
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

/// The module path of a file relative to `src/`: `engine/meter/mod.rs` is
/// `["engine", "meter"]`, `lib.rs` is `[]`.
fn module_of(relative: &str) -> Vec<String> {
    let mut parts: Vec<String> = relative.split('/').map(str::to_owned).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !(stem == "mod" || (stem == "lib" && parts.is_empty())) {
        parts.push(stem.to_owned());
    }
    parts
}

/// The source with comments, string literals' contents, `$crate` and `#[cfg(test)]`
/// modules removed.
fn code_of(source: &str) -> String {
    let mut code = String::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.ends_with('{'))
        {
            // Skip the test module to its closing brace at the same indentation.
            let open = lines.next().unwrap();
            let indent = open.len() - open.trim_start().len();
            let close = format!("{}}}", " ".repeat(indent));
            for line in lines.by_ref() {
                if line == close {
                    break;
                }
            }
            continue;
        }
        let mut in_string = false;
        let mut previous = ' ';
        let mut kept = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if in_string {
                if c == '\\' {
                    i += 2;
                    continue;
                }
                if c == '"' {
                    in_string = false;
                    kept.push('"');
                }
            } else if c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            } else if c == '"' && previous != '\'' {
                in_string = true;
                kept.push('"');
            } else {
                kept.push(c);
            }
            previous = c;
            i += 1;
        }
        code.push_str(&kept.replace("$crate", "__macro_crate"));
        code.push('\n');
    }
    code
}

/// The `use` declarations of `code`, each as its visibility (`true` if re-exported) and the
/// paths it names, groups expanded: `use a::{b, c::{d, self}}` is `a::b`, `a::c::d`, `a::c`.
fn use_declarations(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_keyword(rest, "use") {
        // `pub use` and `pub(crate) use` re-export; a plain `use` only imports.
        let visibility = rest[..at].split_whitespace().next_back().unwrap_or("");
        let public = visibility == "pub" || visibility.starts_with("pub(");
        let after = &rest[at + 3..];
        let Some(end) = after.find(';') else { break };
        let tree = normalise(&after[..end]);
        let mut paths = Vec::new();
        expand(&tree, "", &mut paths);
        out.push((public, paths));
        rest = &after[end..];
    }
    out
}

/// Where `keyword` starts a statement in `text` (not inside an identifier).
fn find_keyword(text: &str, keyword: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find(keyword) {
        let at = from + found;
        let before = text[..at].chars().next_back();
        let after = text[at + keyword.len()..].chars().next();
        let starts = before.is_none_or(|c| {
            c.is_whitespace() || c == ';' || c == '{' || c == '}' || c == ']' || c == ')'
        });
        if starts && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + keyword.len();
    }
    None
}

/// A use tree with whitespace only where it separates words (`a as b`).
fn normalise(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut out = words.join(" ");
    for token in ["::", "{", "}", ","] {
        out = out
            .replace(&format!(" {token}"), token)
            .replace(&format!("{token} "), token);
    }
    out
}

/// Expands a normalised use tree under `prefix`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let join = |tail: &str| {
        if prefix.is_empty() {
            tail.to_owned()
        } else if tail == "self" {
            prefix.to_owned()
        } else {
            format!("{prefix}::{tail}")
        }
    };
    match tree.find('{') {
        None => {
            let path = tree.split_once(" as ").map_or(tree, |(path, _)| path);
            out.push(join(path));
        }
        Some(open) => {
            let head = tree[..open].trim_end_matches("::");
            let inner = &tree[open + 1..tree.len() - 1];
            let prefix = if head.is_empty() {
                prefix.to_owned()
            } else {
                join(head)
            };
            for part in split_top(inner) {
                if !part.is_empty() {
                    expand(part, &prefix, out);
                }
            }
        }
    }
}

/// Splits a group's inside at its top-level commas.
fn split_top(inner: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
}

/// Paths written in code outside `use` declarations: every `a::b…` not inside another
/// path. Those that start with `crate`, `super`, `self` or a child module of the file's
/// module resolve into the crate; the rest (`std::…`, `Arc::new`) are dropped later.
fn code_paths(code: &str) -> Vec<String> {
    let mut without_uses = String::new();
    let mut rest = code;
    while let Some(at) = find_keyword(rest, "use") {
        without_uses.push_str(&rest[..at]);
        match rest[at..].find(';') {
            Some(end) => rest = &rest[at + end..],
            None => rest = "",
        }
    }
    without_uses.push_str(rest);
    let is_path = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut paths = Vec::new();
    let chars: Vec<(usize, char)> = without_uses.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let starts = (c.is_alphabetic() || c == '_')
            && (i == 0 || !is_path(chars[i - 1].1) && chars[i - 1].1 != '$');
        if !starts {
            i += 1;
            continue;
        }
        let end = without_uses[at..]
            .find(|c: char| !is_path(c))
            .map_or(without_uses.len(), |end| at + end);
        let path = without_uses[at..end].trim_end_matches(':');
        if path.contains("::") {
            paths.push(path.to_owned());
        }
        while i < chars.len() && chars[i].0 < end {
            i += 1;
        }
    }
    paths
}

/// Every file of `src/`, read once.
struct Crate {
    /// Module path (joined by `::`) to the file, relative to `src/`.
    modules: BTreeMap<String, String>,
    /// A file's re-exports: the name it exports to the path it names, resolved to
    /// absolute form.
    exports: BTreeMap<String, BTreeMap<String, String>>,
    /// Each file's code and the absolute paths it imports.
    files: BTreeMap<String, Vec<String>>,
}

impl Crate {
    fn read() -> Crate {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut paths = Vec::new();
        rust_files(&src, &mut paths);
        let mut modules = BTreeMap::new();
        let mut codes = BTreeMap::new();
        for path in &paths {
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            modules.insert(module_of(&relative).join("::"), relative.clone());
            codes.insert(relative, code_of(&std::fs::read_to_string(path).unwrap()));
        }
        let mut krate = Crate {
            modules,
            exports: BTreeMap::new(),
            files: BTreeMap::new(),
        };
        for (file, code) in &codes {
            let module = module_of(file);
            for (public, paths) in use_declarations(code) {
                for path in paths {
                    let absolute = krate.absolute(&module, &path);
                    if public {
                        if let Some(absolute) = &absolute {
                            let name = absolute.rsplit("::").next().unwrap().to_owned();
                            krate
                                .exports
                                .entry(file.clone())
                                .or_default()
                                .insert(name, absolute.clone());
                        }
                    }
                    if let Some(absolute) = absolute {
                        krate.files.entry(file.clone()).or_default().push(absolute);
                    }
                }
            }
            for path in code_paths(code) {
                if let Some(absolute) = krate.absolute(&module, &path) {
                    krate.files.entry(file.clone()).or_default().push(absolute);
                }
            }
            krate.files.entry(file.clone()).or_default();
        }
        krate
    }

    /// `path` as written in the module `module`, made absolute (from the crate root), or
    /// `None` if it leaves the crate.
    fn absolute(&self, module: &[String], path: &str) -> Option<String> {
        let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut base: Vec<String> = module.to_vec();
        match segments.first().copied() {
            Some("crate") => {
                base.clear();
                segments.remove(0);
            }
            Some("self") => {
                segments.remove(0);
            }
            Some("super") => {
                while segments.first() == Some(&"super") {
                    base.pop();
                    segments.remove(0);
                }
            }
            Some(first) => {
                // A child module of this one (`use func::EachFn` in `stage/mod.rs`).
                let mut child = base.clone();
                child.push(first.to_owned());
                if !self.modules.contains_key(&child.join("::")) {
                    return None;
                }
            }
            None => return None,
        }
        base.extend(segments.iter().map(|s| (*s).to_owned()));
        Some(base.join("::"))
    }

    /// The file that defines what `path` (absolute) names: the deepest module on the path,
    /// with re-exports followed.
    fn file_of(&self, path: &str) -> String {
        self.file_of_within(path, 8)
    }

    fn file_of_within(&self, path: &str, hops: usize) -> String {
        let segments: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split("::").collect()
        };
        for len in (0..=segments.len()).rev() {
            let module = segments[..len].join("::");
            if let Some(file) = self.modules.get(&module) {
                if let Some(name) = segments.get(len) {
                    if let Some(target) = self.exports.get(file).and_then(|e| e.get(*name)) {
                        if hops > 0 && target != path {
                            let mut target = target.clone();
                            for rest in &segments[len + 1..] {
                                target.push_str("::");
                                target.push_str(rest);
                            }
                            return self.file_of_within(&target, hops - 1);
                        }
                    }
                }
                return file.clone();
            }
        }
        unreachable!("the root module always exists")
    }

    /// Each file to the files it imports, itself left out.
    fn graph(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.files
            .iter()
            .map(|(file, paths)| {
                let targets = paths
                    .iter()
                    .map(|path| self.file_of(path))
                    .filter(|target| target != file)
                    .collect();
                (file.clone(), targets)
            })
            .collect()
    }
}

/// The strongly connected components of more than one file, each sorted.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm; the crate is small, so recursion is fine.
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        for target in state.graph.get(node).into_iter().flatten() {
            let target = target.as_str();
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[node].min(state.low[target]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.low[node].min(state.index[target]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            loop {
                let member = state.stack.pop().unwrap();
                state.on_stack.remove(member);
                component.push(member.to_owned());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.out.sort();
    state.out
}

#[test]
fn each_layer_imports_only_from_the_layers_below_it() {
    let krate = Crate::read();
    let mut violations = Vec::new();
    for (file, targets) in krate.graph() {
        let layer = layer_of_file(&file);
        for target in targets {
            let to = layer_of_file(&target);
            if to != layer && !allowed(layer).contains(&to) {
                violations.push(format!("{file} ({layer}) imports {target} ({to})"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

/// The kind a file of `stage/` belongs to, if any.
fn kind_of(file: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .copied()
        .find(|kind| under(file, &format!("stage/{kind}")))
}

#[test]
fn stage_kinds_import_no_other_kind_and_not_the_dispatcher() {
    let krate = Crate::read();
    let mut violations = Vec::new();
    for (file, targets) in krate.graph() {
        let leaf = SHARED_LEAVES.iter().any(|(leaf, _)| under(&file, leaf));
        let kind = kind_of(&file);
        if kind.is_none() && !leaf {
            continue;
        }
        for target in targets.iter().filter(|target| under(target, "stage")) {
            if kind.is_some() && kind_of(target) == kind {
                continue;
            }
            let shared = SHARED_LEAVES.iter().any(|(shared, users)| {
                under(target, shared) && (leaf || kind.is_some_and(|kind| users.contains(&kind)))
            });
            let target_is_kind = kind_of(target).is_some();
            if !shared || (leaf && target_is_kind) {
                violations.push(format!("{file} imports {target}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "stage kinds and leaves importing what they must not:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_folder_of_src_is_in_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../ARCHITECTURE.md")).unwrap();
    let krate = Crate::read();
    let folders: BTreeSet<&str> = krate
        .files
        .keys()
        .filter_map(|file| file.rsplit_once('/').map(|(folder, _)| folder))
        .collect();
    let missing: Vec<_> = folders
        .iter()
        .filter(|folder| !doc.contains(&format!("`{folder}/`")))
        .collect();
    assert!(
        missing.is_empty(),
        "folders of src/ missing from ARCHITECTURE.md's code map (as `folder/`): {missing:?}"
    );
}

#[test]
fn no_circle_of_files_but_the_allowed_ones() {
    let krate = Crate::read();
    let found = cycles(&krate.graph());
    let allowed: Vec<Vec<String>> = ALLOWED_CYCLES
        .iter()
        .map(|(files, _)| files.iter().map(|file| (*file).to_owned()).collect())
        .collect();
    let unexpected: Vec<_> = found.iter().filter(|c| !allowed.contains(c)).collect();
    let gone: Vec<_> = allowed.iter().filter(|c| !found.contains(c)).collect();
    assert!(
        unexpected.is_empty() && gone.is_empty(),
        "import cycles between files of src/:\n{}\nnot allowed: {unexpected:?}\nallowed but gone \
         (take them out of ALLOWED_CYCLES and ARCHITECTURE.md): {gone:?}",
        found
            .iter()
            .map(|c| c.join(" ↔ "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_allowed_cycle_is_argued_in_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../ARCHITECTURE.md")).unwrap();
    for (files, why) in ALLOWED_CYCLES {
        for file in *files {
            assert!(doc.contains(file), "ARCHITECTURE.md does not name {file}");
        }
        assert!(doc.contains(why), "ARCHITECTURE.md does not say {why:?}");
    }
}

#[test]
fn the_checker_reads_groups_super_and_code_paths() {
    let source = "use crate::{\n    engine::{queue::{self, Receiver}, run},\n    task::Task,\n};\nuse super::sibling::Thing;\n/// crate::observe in a doc\nlet x = crate::stage::Body::Invalid(\"crate::no\");\nsuper::f();\n#[cfg(test)]\nmod tests {\n    use crate::observe;\n}\n";
    let code = code_of(source);
    let reexport = use_declarations("pub(crate) use child::Thing;\nuse other::Else;");
    assert_eq!(
        reexport
            .iter()
            .map(|(public, _)| *public)
            .collect::<Vec<_>>(),
        [true, false]
    );
    let uses: Vec<String> = use_declarations(&code)
        .into_iter()
        .flat_map(|(_, paths)| paths)
        .collect();
    assert_eq!(
        uses,
        [
            "crate::engine::queue",
            "crate::engine::queue::Receiver",
            "crate::engine::run",
            "crate::task::Task",
            "super::sibling::Thing"
        ]
    );
    assert_eq!(
        code_paths(&code),
        ["crate::stage::Body::Invalid", "super::f"]
    );
    assert_eq!(module_of("engine/meter/mod.rs"), ["engine", "meter"]);
    assert_eq!(module_of("engine/queue.rs"), ["engine", "queue"]);
    assert!(module_of("lib.rs").is_empty());
}
