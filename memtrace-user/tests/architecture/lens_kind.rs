//! Each lens in one place: outside `lens/`, at most two modules branch on
//! which lens they hold (a `match` arm, a comparison, `matches!` or
//! `if let` on a `Lens::` variant). Everything else asks the lens: its
//! `Spec`, its `Instance`, or the names and sets a session carries.
//! Naming a lens to pick it (`opts.has(Lens::Rss)`, `Lens::Rss.name()`)
//! is not a branch.

use super::{module_tree, read_disk, src, Module};

/// At most this many modules outside `lens/` branch on the lens kind
/// (`model::lens`, the enum itself, is one).
const MAX_BRANCHING_MODULES: usize = 2;

/// Each place in `code` that branches on a `Lens::` variant, as its line.
fn lens_branches(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let t = line.trim();
        let mut rest = t;
        let mut hit = t.contains("matches!(") && t.contains("Lens::");
        while let Some(i) = rest.find("Lens::") {
            let before = rest[..i].trim_end();
            let after = rest[i + 6..].trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            let after = after.trim_start();
            let arm = after.starts_with("=>")
                || (after.starts_with('|') && !after.starts_with("||"))
                || after.starts_with("==")
                || after.starts_with("!=")
                || (after.starts_with('=') && before.ends_with("let"));
            let compared = before.ends_with("==") || before.ends_with("!=");
            let tuple_let = before.ends_with("let (") || before.ends_with("let Some(");
            hit |= arm || compared || tuple_let;
            rest = &rest[i + 6..];
        }
        if hit {
            out.push(t.to_string());
        }
    }
    out
}

/// The modules outside `lens` that branch, with their first branch.
fn branching(mods: &[Module]) -> Vec<String> {
    mods.iter()
        .filter(|m| m.path.first().map(String::as_str) != Some("lens"))
        .filter_map(|m| {
            let b = lens_branches(&m.code);
            let first = b.first()?;
            Some(format!(
                "{} ({} places, e.g. `{first}`)",
                m.path.join("::"),
                b.len()
            ))
        })
        .collect()
}

#[test]
fn each_lens_lives_in_lens() {
    let mods = module_tree(&src(), &read_disk);
    let found = branching(&mods);
    assert!(
        found.len() <= MAX_BRANCHING_MODULES,
        "{} modules outside lens/ branch on the lens kind (at most {MAX_BRANCHING_MODULES}); \
         give the lens a Spec field or an Instance method instead:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn a_branch_on_the_lens_kind_is_seen_and_a_choice_is_not() {
    let code = "match lens {\n    Lens::Rss => 1,\n    Lens::Alloc | Lens::Heap => 2,\n}\n\
                if p.lens == Lens::Rss {}\nif Lens::Heap != l {}\n\
                let x = matches!(l, Lens::Goroutines);\n\
                if let Lens::Mmap = l {}\nif let (Lens::Rss, Some(x)) = (l, y) {}\n\
                let mut v = vec![Lens::Rss, Lens::Goroutines];\n\
                if opts.has(Lens::AllocExact) || Lens::Rss.name() == n {}\n\
                let l = Lens::Heap;\n";
    let found = lens_branches(code);
    assert_eq!(
        found,
        vec![
            "Lens::Rss => 1,",
            "Lens::Alloc | Lens::Heap => 2,",
            "if p.lens == Lens::Rss {}",
            "if Lens::Heap != l {}",
            "let x = matches!(l, Lens::Goroutines);",
            "if let Lens::Mmap = l {}",
            "if let (Lens::Rss, Some(x)) = (l, y) {}",
        ]
    );
}
