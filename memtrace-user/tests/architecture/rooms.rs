//! No room grows too big to live in: source files of at most
//! `MAX_FILE_LINES` lines and functions of at most `MAX_FN_LINES`, in every
//! crate, the end-to-end tests and these checks themselves.

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 120;

/// Source files outside tests: over `MAX_FILE_LINES` lines, or with a
/// function over `MAX_FN_LINES` (from its `fn` line to its closing brace
/// at the same indent).
fn big_rooms(dirs: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    let mut todo = dirs.to_vec();
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap();
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        out.extend(rooms_of(&f.display().to_string(), &text));
    }
    out
}

fn rooms_of(name: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > MAX_FILE_LINES {
        out.push(format!("{name} is {} lines", lines.len()));
    }
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = &l[..l.len() - t.len()];
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        let t = t.strip_prefix("async ").unwrap_or(t);
        let t = t.strip_prefix("unsafe ").unwrap_or(t);
        if !t.starts_with("fn ") || l.trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(j) = lines[i + 1..].iter().position(|x| *x == close) {
            if j + 1 > MAX_FN_LINES {
                let fname: String = t[3..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(format!("{name}:{} fn {fname} is {} lines", i + 1, j + 1));
            }
        }
    }
    out
}

#[test]
fn no_room_is_too_big() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // Every crate's sources, and the end-to-end tests themselves.
    let dirs: Vec<PathBuf> = [
        "memtrace-user/src",
        "memtrace-common/src",
        "memtrace-ebpf/src",
        "xtask/src",
        "tests/src",
        "tests/tests",
        "memtrace-user/tests",
    ]
    .iter()
    .map(|c| ws.join(c))
    .collect();
    for d in &dirs {
        assert!(d.is_dir(), "{} is gone: update this list", d.display());
    }
    let big = big_rooms(&dirs);
    assert!(
        big.is_empty(),
        "split these where a stage hides inside:\n{}",
        big.join("\n")
    );
}

#[test]
fn a_long_function_and_a_long_file_are_caught() {
    let body = "    x += 1;\n".repeat(MAX_FN_LINES);
    let text = format!("pub fn long() {{\n{body}}}\n\nfn short() {{\n}}\n");
    assert_eq!(
        rooms_of("f.rs", &text),
        vec![format!("f.rs:1 fn long is {} lines", MAX_FN_LINES + 1)]
    );
    assert_eq!(rooms_of("g.rs", &"\n".repeat(MAX_FILE_LINES + 1)).len(), 1);
}
