//! The layout's rules, checked on the source (issue 26): each storage backend knows only the
//! shared `store` modules (only `store::copy`, the copy between them, may name both); a folder
//! under `routes/` never uses a sibling folder; and no two modules use each other, directly or
//! round a circle. A module using its own ancestors (a trait, a shared type) is not a circle.
//!
//! Paths are read from the code with comments left out: `crate::`, `super::` and `self::` paths,
//! their `{…}` groups included, each resolved to the deepest module file it reaches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path below the crate root, e.g. `["store", "sled", "apply"]`.
type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code without `//` comments (doc comments included) and without the unit tests at its
/// end, which use whatever they test.
fn code(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string ("http://…") is rare in paths; the rest of such a line
            // holds no path either way.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path a use tree starting at `text[at..]` names, appended to `prefix`: `a::b`,
/// `a::{b, c::d}`, `a::{self, b}`.
fn use_tree(
    text: &[char],
    mut at: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix;
    loop {
        while text.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        if text.get(at) == Some(&'{') {
            at += 1;
            loop {
                at = use_tree(text, at, path.clone(), out);
                while text.get(at).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    at += 1;
                }
                match text.get(at) {
                    Some('}') => return at + 1,
                    None => return at,
                    _ => {}
                }
            }
        }
        let start = at;
        while text.get(at).is_some_and(|c| is_ident(*c)) {
            at += 1;
        }
        let segment: String = text[start..at].iter().collect();
        if segment.is_empty() {
            out.push(path);
            return at;
        }
        if segment != "self" || path.is_empty() {
            path.push(segment);
        }
        if text.get(at) == Some(&':') && text.get(at + 1) == Some(&':') {
            at += 2;
        } else {
            out.push(path);
            return at;
        }
    }
}

/// The modules `module`'s code names, each the deepest module file its path reaches.
fn used_modules(module: &Module, code: &str, known: &BTreeSet<Module>) -> BTreeSet<Module> {
    let text: Vec<char> = code.chars().collect();
    // Paths start at the crate, a parent, this module, or a child module this file declares
    // (`mod apply;` then `apply::put(…)` or `use apply::x`).
    let mut roots: Vec<Vec<char>> = ["crate::", "super::", "self::"]
        .iter()
        .map(|r| r.chars().collect())
        .collect();
    roots.extend(child_modules(code).map(|name| format!("{name}::").chars().collect()));
    let mut paths = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let starts = roots.iter().find(|root| {
            text[at..].starts_with(root)
                && (at == 0 || !(is_ident(text[at - 1]) || text[at - 1] == ':'))
        });
        match starts {
            Some(_) => at = use_tree(&text, at, Vec::new(), &mut paths),
            None => at += 1,
        }
    }
    let mut used = BTreeSet::new();
    for path in paths {
        let mut resolved: Module = Vec::new();
        let mut base = module.clone();
        let mut segments = path.into_iter().peekable();
        match segments.peek().map(String::as_str) {
            Some("crate") => {
                segments.next();
                base.clear();
            }
            Some("super") => {
                while segments.peek().map(String::as_str) == Some("super") {
                    segments.next();
                    base.pop();
                }
            }
            _ => {}
        }
        let full: Module = base.into_iter().chain(segments).collect();
        for end in (0..=full.len()).rev() {
            if known.contains(&full[..end]) {
                resolved = full[..end].to_vec();
                break;
            }
        }
        if !module.starts_with(&resolved) {
            used.insert(resolved);
        }
    }
    used
}

/// The child modules `code` declares (`mod x;`, `pub mod x;`, `pub(super) mod x;`, ...).
fn child_modules(code: &str) -> impl Iterator<Item = &str> {
    code.lines().filter_map(|line| {
        let line = line.trim();
        let declared = line.strip_suffix(';')?;
        let (head, name) = declared.rsplit_once(' ')?;
        let visibility = head.strip_suffix("mod")?.trim();
        (visibility.is_empty() || visibility.starts_with("pub")).then_some(name)
    })
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let known: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    files
        .iter()
        .map(|file| {
            let module = module_of(&src, file);
            let text = code(&std::fs::read_to_string(file).unwrap());
            let used = used_modules(&module, &text, &known);
            (module, used)
        })
        .collect()
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// A circle of modules through `start`, when there is one.
fn circle(
    graph: &BTreeMap<Module, BTreeSet<Module>>,
    start: &Module,
    path: &mut Vec<Module>,
    done: &mut BTreeSet<Module>,
) -> Option<Vec<Module>> {
    if let Some(at) = path.iter().position(|m| m == start) {
        let mut found = path[at..].to_vec();
        found.push(start.clone());
        return Some(found);
    }
    if done.contains(start) {
        return None;
    }
    path.push(start.clone());
    for next in graph.get(start).into_iter().flatten() {
        if let Some(found) = circle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(start.clone());
    None
}

#[test]
fn no_module_is_part_of_a_circle() {
    let graph = graph();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = circle(&graph, module, &mut Vec::new(), &mut done) {
            let names: Vec<String> = found.iter().map(name).collect();
            panic!("modules use each other in a circle: {}", names.join(" → "));
        }
    }
}

#[test]
fn each_storage_backend_knows_only_the_shared_store() {
    let graph = graph();
    let backend = |m: &Module, which: &str| m.len() >= 2 && m[0] == "store" && m[1] == which;
    for (module, used) in &graph {
        for (from, other) in [("postgres", "sled"), ("sled", "postgres")] {
            if backend(module, from) {
                let wrong: Vec<String> = used
                    .iter()
                    .filter(|u| backend(u, other))
                    .map(name)
                    .collect();
                assert!(
                    wrong.is_empty(),
                    "{} uses {}: only store::copy may name both backends",
                    name(module),
                    wrong.join(", ")
                );
            }
        }
    }
    // The rule is not empty: the copy does name both.
    let copy = &graph[&vec!["store".to_string(), "copy".to_string()]];
    assert!(copy.iter().any(|u| backend(u, "sled")) && copy.iter().any(|u| backend(u, "postgres")));
}

#[test]
fn no_folder_under_routes_uses_a_sibling_folder() {
    let routes = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes");
    let folders: BTreeSet<String> = std::fs::read_dir(&routes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(folders.len() >= 3, "{folders:?}");
    for (module, used) in graph() {
        if module.len() < 2 || module[0] != "routes" || !folders.contains(&module[1]) {
            continue;
        }
        for target in used {
            let sibling = target.len() >= 2
                && target[0] == "routes"
                && target[1] != module[1]
                && folders.contains(&target[1]);
            assert!(!sibling, "{} uses {}", name(&module), name(&target));
        }
    }
}
