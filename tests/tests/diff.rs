//! `memtrace diff`: two real reports of one program with more records in
//! the second; the growth is named, drawn red, and bad inputs get one line.

use memtrace_tests::*;

fn report(v: &str, objects: &str, name: &str) -> std::path::PathBuf {
    let bin = fixture(v, "allocs");
    Record::new(name)
        .lens("alloc-exact")
        .launch(&bin, &["-objects", objects, "-maps", "1"])
        .ok()
        .out
}

#[test]
fn diff_names_what_grew() {
    let v = go_versions().pop().unwrap();
    let a = report(&v, "10000", "diff-a");
    let b = report(&v, "60000", "diff-b");
    let svg = out_dir("diff-out").join("d.svg");
    let o = run_memtrace(
        &[
            "diff",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--lens",
            "alloc-exact",
            "-o",
            svg.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let grew: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("grew most:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert!(
        grew.first().is_some_and(
            |l| l.contains("main.allocateRecords") && l.contains(&format!("+{}", 50_000 * 64))
        ),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("main.allocateRecords"));
    // Growth is drawn in inferno's differential red.
    assert!(svg.contains("fill=\"rgb(255,"), "no red frame");

    let o = run_memtrace(
        &[
            "diff",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--lens",
            "heap",
        ],
        &[],
    );
    assert_one_line_error(&o, "has no heap.folded");
    let o = run_memtrace(&["diff", "/no/such", b.to_str().unwrap()], &[]);
    assert_one_line_error(&o, "/no/such does not exist");
}

/// By source line: the reports' pprof files carry the lines, so the growth
/// is named at the line of the allocation, and the report written with
/// `--frames line` has lines in its folded stacks too.
#[test]
fn diff_by_line_names_the_line_that_grew() {
    let v = go_versions().pop().unwrap();
    let a = report(&v, "10000", "diff-line-a");
    let b = Record::new("diff-line-b")
        .lens("alloc-exact")
        .arg("--frames")
        .arg("line")
        .launch(&fixture(&v, "allocs"), &["-objects", "60000", "-maps", "1"])
        .ok()
        .out;
    let folded = std::fs::read_to_string(b.join("alloc-exact.folded")).unwrap();
    assert!(
        folded.contains(";main.allocateRecords main.go:29 "),
        "--frames line: {folded}"
    );
    let o = run_memtrace(
        &[
            "diff",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--lens",
            "alloc-exact",
            "--frames",
            "line",
            "-o",
            out_dir("diff-line-out").join("d.svg").to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = stdout
        .lines()
        .skip_while(|l| !l.starts_with("grew most:"))
        .nth(1)
        .unwrap_or("");
    assert!(
        first.contains("main.allocateRecords main.go:29")
            && first.contains(&format!("+{}", 50_000 * 64)),
        "{stdout}"
    );
    // A bare folded file has no lines to compare by.
    let o = run_memtrace(
        &[
            "diff",
            a.join("alloc-exact.folded").to_str().unwrap(),
            b.to_str().unwrap(),
            "--lens",
            "alloc-exact",
            "--frames",
            "line",
        ],
        &[],
    );
    assert_one_line_error(&o, "has no source lines");
}
