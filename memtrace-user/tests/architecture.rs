//! The crate's shape, checked: its layers import only downward, no two
//! modules import each other (directly or round a cycle), and no room
//! grows too big to live in.
//!
//! The layers, bottom to top, are the top-level modules in [`LAYERS`]. The
//! module tree is read the way rustc reads it, from `lib.rs` along the
//! `mod` declarations (`#[path]` included); test-only modules and inline
//! `#[cfg(test)]` blocks are left out. An import is any `crate::`,
//! `super::` or `self::` path, in `use` trees or inline, resolved to the
//! deepest module it names. A module and its own submodules are one room
//! (a parent declares its children, and a child may extend its parent's
//! types), so imports between them are not counted as cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, bottom to top. A module may import from its own
/// layer and the ones before it.
const LAYERS: &[&str] = &[
    "model", "host", "binary", "kernel", "lens", "render", "engine", "front", "cli", "fuzzing",
];

#[path = "architecture/lens_kind.rs"]
mod lens_kind;

#[path = "architecture/rooms.rs"]
mod rooms;

type ModPath = Vec<String>;

struct Module {
    path: ModPath,
    file: PathBuf,
    /// The source without comments and test-only blocks.
    code: String,
    /// Its non-test child modules.
    children: BTreeSet<String>,
}

/// Reads the module tree from `root/lib.rs`; `read` returns a file's text.
fn module_tree(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Vec<Module> {
    let mut out = Vec::new();
    let mut todo = vec![(Vec::new(), root.join("lib.rs"))];
    while let Some((path, file)) = todo.pop() {
        let text = read(&file).unwrap_or_else(|| panic!("cannot read {}", file.display()));
        let code = strip_tests(&strip_comments(&text));
        let mut children = BTreeSet::new();
        for decl in mod_decls(&code) {
            if decl.test {
                continue;
            }
            let stem_dir = match file.file_stem().and_then(|s| s.to_str()) {
                Some("lib" | "mod") => file.parent().unwrap().to_path_buf(),
                Some(stem) => file.parent().unwrap().join(stem),
                None => unreachable!(),
            };
            let child = match &decl.path_attr {
                Some(p) => file.parent().unwrap().join(p),
                None => {
                    let flat = stem_dir.join(format!("{}.rs", decl.name));
                    if read(&flat).is_some() {
                        flat
                    } else {
                        stem_dir.join(&decl.name).join("mod.rs")
                    }
                }
            };
            let mut p = path.clone();
            p.push(decl.name.clone());
            children.insert(decl.name);
            todo.push((p, child));
        }
        out.push(Module {
            path,
            file,
            code,
            children,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

struct ModDecl {
    name: String,
    test: bool,
    path_attr: Option<String>,
}

/// `mod name;` declarations, with their `#[cfg(test)]` and `#[path]`.
fn mod_decls(code: &str) -> Vec<ModDecl> {
    let mut out = Vec::new();
    let mut attrs: Vec<&str> = Vec::new();
    for line in code.lines().map(str::trim) {
        if line.starts_with("#[") {
            attrs.push(line);
            continue;
        }
        let rest = line
            .strip_prefix("pub(crate) ")
            .or_else(|| line.strip_prefix("pub "))
            .unwrap_or(line);
        if let Some(name) = rest.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            out.push(ModDecl {
                name: name.trim().to_string(),
                test: attrs.iter().any(|a| a.starts_with("#[cfg(test)]")),
                path_attr: attrs.iter().find_map(|a| {
                    a.strip_prefix("#[path = \"")
                        .and_then(|r| r.strip_suffix("\"]"))
                        .map(str::to_string)
                }),
            });
        }
        if !line.is_empty() {
            attrs.clear();
        }
    }
    out
}

/// Drops `//` comments (doc comments included), keeping string literals.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            match c {
                '"' if prev != '\\' => in_str = !in_str,
                '/' if !in_str && prev == '/' => {
                    cut = i - 1;
                    break;
                }
                _ => {}
            }
            prev = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// Drops inline `#[cfg(test)] mod name { ... }` blocks and `#[cfg(test)]`
/// items of one line.
fn strip_tests(code: &str) -> String {
    let mut out = String::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // Skip the item after it: to its end at depth zero.
        let mut depth = 0i32;
        let mut opened = false;
        for l in lines.by_ref() {
            depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
            opened |= l.contains('{');
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// Every path a module names from the crate: `use` trees flattened, and
/// inline `crate::`/`super::`/`self::` paths. Relative `use` paths count
/// only when they start at one of `children`.
fn named_paths(code: &str, children: &BTreeSet<String>) -> Vec<ModPath> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = find_use(rest) {
        let after = &rest[i..];
        let end = after.find(';').unwrap_or(after.len());
        let tree: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        for p in flatten(&tree) {
            let relative_child = children.contains(&p[0]);
            if matches!(p[0].as_str(), "crate" | "super" | "self") || relative_child {
                out.push(p);
            }
        }
        rest = &after[end..];
    }
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            from = at + root.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(
                path.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    out
}

/// The byte offset just after the next `use ` keyword.
fn find_use(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = code[from..].find("use ") {
        let at = from + i;
        let before = code[..at].chars().next_back();
        if before.is_none_or(|c| c.is_whitespace() || c == ';' || c == '{' || c == '}') {
            return Some(at + 4);
        }
        from = at + 4;
    }
    None
}

/// `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e` (whitespace
/// removed; `as` renames dropped).
fn flatten(tree: &str) -> Vec<ModPath> {
    fn walk(prefix: &[String], s: &str, out: &mut Vec<ModPath>) {
        if let Some(open) = s.find('{') {
            let mut p = prefix.to_vec();
            p.extend(segments(&s[..open]));
            let close = s.rfind('}').filter(|&c| c > open).unwrap_or(s.len());
            let inner = &s[open + 1..close];
            for part in split_top(inner) {
                walk(&p, part, out);
            }
        } else {
            let mut p = prefix.to_vec();
            let s = s.split("as").next().unwrap_or(s);
            p.extend(segments(s));
            if !p.is_empty() {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&[], tree, &mut out);
    out
}

fn segments(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split("::")
        .filter(|x| !x.is_empty() && *x != "*")
        .map(str::to_string)
}

/// Splits on the commas outside braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// A path named in module `from`, made absolute (`crate`, `super` and
/// `self` resolved).
fn absolute(from: &Module, p: &ModPath) -> ModPath {
    let mut base: ModPath = from.path.clone();
    let mut segs = p.iter().peekable();
    match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            base.clear();
            segs.next();
        }
        Some("self") => {
            segs.next();
        }
        Some("super") => {
            while segs.peek().map(|s| s.as_str()) == Some("super") {
                base.pop();
                segs.next();
            }
        }
        _ => {}
    }
    base.extend(segs.cloned());
    base
}

/// Module-to-module imports, each with one path that shows it.
fn imports(mods: &[Module]) -> BTreeMap<(ModPath, ModPath), String> {
    let known: BTreeSet<&ModPath> = mods.iter().map(|m| &m.path).collect();
    let mut edges = BTreeMap::new();
    for m in mods {
        for p in named_paths(&m.code, &m.children) {
            let abs = absolute(m, &p);
            let Some(target) = (0..=abs.len())
                .rev()
                .map(|k| abs[..k].to_vec())
                .find(|t| known.contains(t))
            else {
                continue;
            };
            let related = target.starts_with(&m.path) || m.path.starts_with(&target);
            if !related {
                edges
                    .entry((m.path.clone(), target))
                    .or_insert_with(|| format!("{} names {}", m.file.display(), p.join("::")));
            }
        }
    }
    edges
}

/// Imports from a layer above the importer's.
fn upward(edges: &BTreeMap<(ModPath, ModPath), String>) -> Vec<String> {
    let rank = |p: &ModPath| p.first().and_then(|l| LAYERS.iter().position(|x| x == l));
    edges
        .iter()
        .filter(|((from, to), _)| matches!((rank(from), rank(to)), (Some(a), Some(b)) if b > a))
        .map(|((from, to), why)| {
            format!(
                "{} imports {} upward: {why}",
                from.join("::"),
                to.join("::")
            )
        })
        .collect()
}

/// The import cycles (strongly connected groups of more than one module).
fn cycles(edges: &BTreeMap<(ModPath, ModPath), String>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    // Kosaraju: finish order on the graph, then components on its reverse.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for &start in graph.keys() {
        let mut stack = vec![(start, 0usize)];
        if !seen.insert(start) {
            continue;
        }
        while let Some((v, i)) = stack.pop() {
            if let Some(&w) = graph[v].get(i) {
                stack.push((v, i + 1));
                if seen.insert(w) {
                    stack.push((w, 0));
                }
            } else {
                order.push(v);
            }
        }
    }
    let mut rev: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (&v, ws) in &graph {
        for &w in ws {
            rev.entry(w).or_default().push(v);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for &v in order.iter().rev() {
        if !assigned.insert(v) {
            continue;
        }
        let mut comp = vec![v.join("::")];
        let mut stack = vec![v];
        while let Some(x) = stack.pop() {
            for &w in rev.get(x).into_iter().flatten() {
                if assigned.insert(w) {
                    comp.push(w.join("::"));
                    stack.push(w);
                }
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn read_disk(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn layers_import_only_downward() {
    let mods = module_tree(&src(), &read_disk);
    let top: Vec<&str> = mods
        .iter()
        .filter(|m| m.path.len() == 1)
        .map(|m| m.path[0].as_str())
        .collect();
    assert!(
        top.len() <= 10,
        "lib.rs declares {} modules: {top:?}",
        top.len()
    );
    for t in &top {
        assert!(
            LAYERS.contains(t),
            "`{t}` is in no layer: add it to LAYERS in its place"
        );
    }
    let bad = upward(&imports(&mods));
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn no_two_modules_import_each_other() {
    let mods = module_tree(&src(), &read_disk);
    assert!(
        mods.len() > 50,
        "the module tree was not read: {}",
        mods.len()
    );
    let edges = imports(&mods);
    let found = cycles(&edges);
    let show: Vec<String> = found
        .iter()
        .map(|c| {
            let why: Vec<&String> = edges
                .iter()
                .filter(|((f, t), _)| c.contains(&f.join("::")) && c.contains(&t.join("::")))
                .map(|(_, w)| w)
                .collect();
            format!(
                "{}:\n  {}",
                c.join(" "),
                why.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", show.join("\n"));
}

// The checker itself, on made-up trees: each rule can fail.

fn fake_tree(files: &[(&str, &str)]) -> Vec<Module> {
    let map: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, s)| (Path::new("/src").join(p), s.to_string()))
        .collect();
    module_tree(Path::new("/src"), &|p| map.get(p).cloned())
}

#[test]
fn an_upward_import_is_caught() {
    let mods = fake_tree(&[
        ("lib.rs", "pub mod model;\npub mod engine;\n"),
        ("model/mod.rs", "pub mod summary;\n"),
        (
            "model/summary.rs",
            "use crate::engine::{Exit, run::drive};\n",
        ),
        (
            "engine.rs",
            "use crate::model::summary::Summary;\npub struct Exit;\n",
        ),
    ]);
    let bad = upward(&imports(&mods));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("model::summary imports engine upward"),
        "{bad:?}"
    );
}

#[test]
fn a_cycle_through_super_and_groups_is_caught_and_tests_are_not() {
    let mods = fake_tree(&[
        ("lib.rs", "pub mod lens;\n"),
        ("lens/mod.rs", "pub mod aggregate;\npub mod rss;\n#[cfg(test)]\nmod tests;\n"),
        ("lens/aggregate.rs", "use crate::lens::{rss::RssAgg, self};\n"),
        ("lens/rss.rs", "// use super::aggregate::Cell;\nfn f() -> super::aggregate::Cell { todo!() }\n#[cfg(test)]\nmod tests {\n    use crate::lens::tests::x;\n}\n"),
        ("lens/tests.rs", "use crate::lens::rss;\n"),
    ]);
    assert_eq!(mods.len(), 4, "the test module is not read");
    let edges = imports(&mods);
    assert_eq!(
        cycles(&edges),
        vec![vec!["lens::aggregate".to_string(), "lens::rss".to_string()]]
    );
    assert!(
        !edges.keys().any(|(f, t)| f.len() < 2 || t.len() < 2),
        "a parent and its children are one room: {:?}",
        edges.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_path_attribute_is_followed() {
    let mods = fake_tree(&[
        ("lib.rs", "pub mod front;\n"),
        ("front/mod.rs", "pub mod session;\n"),
        (
            "front/session.rs",
            "#[path = \"session_reports.rs\"]\nmod reports;\n",
        ),
        ("front/session_reports.rs", "use super::Session;\n"),
    ]);
    let paths: Vec<String> = mods.iter().map(|m| m.path.join("::")).collect();
    assert!(
        paths.contains(&"front::session::reports".to_string()),
        "{paths:?}"
    );
}
