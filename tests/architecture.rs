//! The shape of the code, held by a test: every `crate::` (and `super::`) path in `src/` is
//! resolved to the file it names, and
//! - each arrow between layers must be in `ALLOWED` (engine ← session ← ui ← commands ← main),
//! - no circle of files may appear (a module may always use its own submodules: it declares them),
//! - clap lives in `commands` (and `main.rs`), terminal crates in `ui`.
//!
//! The rules run once on the real tree and once on a small tree with a wrong arrow, a circle and
//! a stray clap import, so the test is seen to fail where it should.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Layer → the layers it may import. A layer always imports itself.
const ALLOWED: &[(&str, &[&str])] = &[
    ("engine", &[]),
    ("session", &["engine"]),
    ("ui", &["session", "engine"]),
    ("commands", &["ui", "session", "engine"]),
    // src/main.rs and src/lib.rs.
    ("root", &["commands"]),
];

/// External crates only some layers may name: (crate, the layers that may).
const CRATE_OWNERS: &[(&str, &[&str])] = &[
    ("clap", &["commands", "root"]),
    ("ratatui", &["ui"]),
    ("crossterm", &["ui"]),
];

/// A source file and the module path it defines (`src/engine/cuda/gpu.rs` → engine::cuda::gpu).
#[derive(Clone, Debug)]
struct Module {
    file: String,
    path: Vec<String>,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable src dir") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(src).expect("under src");
                let mut path: Vec<String> = rel
                    .iter()
                    .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                    .collect();
                if matches!(
                    path.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    path.pop();
                }
                out.push(Module {
                    file: rel.display().to_string(),
                    path,
                });
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

fn layer_of(path: &[String]) -> &str {
    match path.first().map(String::as_str) {
        Some(l @ ("engine" | "session" | "ui" | "commands")) => l,
        _ => "root",
    }
}

/// Every path a file names, made absolute (crate-relative segments).
struct Paths {
    module: Vec<String>,
    /// Inline `mod x { .. }` nesting: `super` inside it first leaves the inline module.
    inline_depth: usize,
    found: Vec<Vec<String>>,
    crates: BTreeSet<String>,
}

impl Paths {
    fn resolve(&mut self, segments: Vec<String>) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut base: Vec<String>;
        let mut rest = &segments[..];
        match first.as_str() {
            "crate" => {
                base = Vec::new();
                rest = &rest[1..];
            }
            "super" | "self" => {
                base = self.module.clone();
                let mut depth = self.inline_depth;
                while let Some(s) = rest.first() {
                    match s.as_str() {
                        "self" => rest = &rest[1..],
                        "super" => {
                            if depth > 0 {
                                depth -= 1;
                            } else {
                                base.pop();
                            }
                            rest = &rest[1..];
                        }
                        _ => break,
                    }
                }
            }
            other => {
                self.crates.insert(other.to_string());
                return;
            }
        }
        base.extend(rest.iter().cloned());
        self.found.push(base);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                full.push(n.ident.to_string());
                self.resolve(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.resolve(full);
            }
            syn::UseTree::Glob(_) => self.resolve(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() && p.segments.len() > 1 {
            self.resolve(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.inline_depth += 1;
            syn::visit::visit_item_mod(self, m);
            self.inline_depth -= 1;
        }
    }
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Macro bodies are tokens; a path like `crate::x::y` inside one still counts.
        let text = m.tokens.to_string().replace(' ', "");
        for start in text.match_indices("crate::").map(|(i, _)| i) {
            let tail: String = text[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segs: Vec<String> = tail
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            self.resolve(segs);
        }
        syn::visit::visit_macro(self, m);
    }
}

/// The file (module) a resolved path lands in: the longest module prefix.
fn target<'m>(path: &[String], by_path: &'m BTreeMap<Vec<String>, String>) -> Option<&'m String> {
    (0..=path.len()).rev().find_map(|n| by_path.get(&path[..n]))
}

/// Every rule broken in the tree under `src`, in words.
fn violations(src: &Path) -> Vec<String> {
    let mods = modules(src);
    let by_path: BTreeMap<Vec<String>, String> = mods
        .iter()
        .map(|m| (m.path.clone(), m.file.clone()))
        .collect();
    let path_of: BTreeMap<&str, &Vec<String>> =
        mods.iter().map(|m| (m.file.as_str(), &m.path)).collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &mods {
        let text = std::fs::read_to_string(src.join(&m.file)).expect("readable source");
        let ast = match syn::parse_file(&text) {
            Ok(ast) => ast,
            Err(e) => {
                problems.push(format!("{}: does not parse: {e}", m.file));
                continue;
            }
        };
        let mut v = Paths {
            module: m.path.clone(),
            inline_depth: 0,
            found: Vec::new(),
            crates: BTreeSet::new(),
        };
        v.visit_file(&ast);
        let from = layer_of(&m.path);
        for (krate, owners) in CRATE_OWNERS {
            if v.crates.contains(*krate) && !owners.contains(&from) {
                problems.push(format!(
                    "{}: names the `{krate}` crate, which only {owners:?} may",
                    m.file
                ));
            }
        }
        for p in &v.found {
            let Some(file) = target(p, &by_path) else {
                continue;
            };
            if file == &m.file {
                continue;
            }
            let to_path = path_of[file.as_str()];
            let to = layer_of(to_path);
            if to != from && !allowed[from].contains(&to) {
                problems.push(format!(
                    "{}: imports {} ({from} → {to} is not an allowed arrow)",
                    m.file,
                    p.join("::")
                ));
            }
            // A module may use its own submodules: it declares them.
            if !to_path.starts_with(&m.path) {
                edges
                    .entry(m.file.clone())
                    .or_default()
                    .insert(file.clone());
            }
        }
    }
    for circle in circles(&edges) {
        problems.push(format!("a circle of imports: {}", circle.join(" → ")));
    }
    problems.sort();
    problems.dedup();
    problems
}

/// Strongly connected components of more than one file (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(next) = s.edges.get(v) {
            for w in next {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_arrow_points_down_and_no_circle_appears() {
    let problems = violations(&src_dir());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_wrong_arrow_a_circle_and_a_stray_crate_are_caught() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, text).expect("write");
    };
    write("lib.rs", "pub mod engine;\npub mod ui;\n");
    write(
        "engine/mod.rs",
        "pub mod a;\npub mod b;\nuse crate::ui::app::App;\n",
    );
    write("engine/a.rs", "use super::b::B;\npub struct A;\n");
    write("engine/b.rs", "pub struct B(crate::engine::a::A);\n");
    write("ui/mod.rs", "pub mod app;\n");
    write("ui/app.rs", "use clap::Parser;\npub struct App;\n");
    let problems = violations(src);
    let all = problems.join("\n");
    assert!(
        all.contains("engine/mod.rs: imports ui::app::App (engine → ui"),
        "{all}"
    );
    assert!(
        all.contains("a circle of imports: engine/a.rs → engine/b.rs"),
        "{all}"
    );
    assert!(all.contains("ui/app.rs: names the `clap` crate"), "{all}");
    assert_eq!(problems.len(), 3, "{all}");
}
