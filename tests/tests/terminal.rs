//! At the terminal: `memtrace doctor` on this host, without capabilities
//! and on every kind of binary (and broken ones); completions for every
//! shell; `index.html`; `record --help`; and `memtrace top` driven in tmux
//! and piped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use memtrace_tests::*;

fn doctor(args: &[&str]) -> Output {
    let mut cmd = Command::new(memtrace());
    cmd.arg("doctor").args(args);
    wait_output(cmd, Duration::from_secs(60))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value column of a `doctor` line (`  NAME  value`).
fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
}

fn lens_line<'a>(text: &'a str, lens: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(&format!("{lens} ")))
        .unwrap_or_else(|| panic!("no {lens} line in:\n{text}"))
        .trim()
}

#[test]
fn doctor_passes_on_this_host() {
    let o = doctor(&[]);
    let text = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for check in [
        "kernel",
        "BTF",
        "tracefs",
        "tracepoints",
        "uprobes",
        "capabilities",
        "perf_event_paranoid",
        "lockdown",
        "THP",
        "memlock",
        "eBPF",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} check:\n{text}"));
        assert!(!line.contains("FAIL"), "{line}");
    }
    assert!(text.contains("a tracepoint and a uprobe attach"), "{text}");
    assert!(text.contains("the host can trace"));
    assert_no_memtrace_programs();
}

#[test]
fn doctor_without_capabilities_names_them() {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--",
    ])
    .arg(memtrace())
    .arg("doctor");
    let o = wait_output(cmd, Duration::from_secs(60));
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let caps = text.lines().find(|l| l.contains("capabilities")).unwrap();
    assert!(caps.contains("FAIL"), "{caps}");
    for c in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"] {
        assert!(caps.contains(c), "{caps}");
    }
    assert!(text.contains("setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_admin+ep"));
    assert!(text.contains("the host cannot trace"), "{text}");
}

#[test]
fn doctor_describes_each_kind_of_binary() {
    for v in go_versions() {
        let plain = doctor(&[fixture(&v, "allocs").to_str().unwrap()]);
        let text = stdout(&plain);
        assert_eq!(plain.status.code(), Some(0), "{text}");
        let want_version = format!("go{v}");
        assert!(field(&text, "Go").starts_with(&want_version), "{text}");
        assert!(field(&text, "Go").contains("module memtrace.test/allocs"));
        assert_eq!(field(&text, "build"), "not stripped, not PIE, no cgo");
        assert!(
            field(&text, "allocators").starts_with("runtime.mallocgc"),
            "{text}"
        );
        if v.starts_with("1.27") {
            assert!(
                field(&text, "allocators").contains("size-specialized"),
                "{text}"
            );
        }
        for lens in ["rss", "mmap", "alloc", "alloc-exact", "heap", "goroutines"] {
            assert!(lens_line(&text, lens).contains("works"), "{v}: {text}");
        }

        // Stripped builds: every lens works, the runtime's variables found
        // from code.
        for (build, kind) in [
            ("allocs-stripped", "stripped, not PIE, no cgo"),
            ("allocs-pie-stripped", "stripped, PIE, no cgo"),
        ] {
            let stripped = stdout(&doctor(&[fixture(&v, build).to_str().unwrap()]));
            assert_eq!(field(&stripped, "build"), kind);
            for lens in ["rss", "mmap", "alloc", "alloc-exact", "heap", "goroutines"] {
                assert!(
                    lens_line(&stripped, lens).contains("works"),
                    "{v} {build}: {stripped}"
                );
            }
            for lens in ["alloc", "heap"] {
                let l = lens_line(&stripped, lens);
                assert!(l.contains("runtime.mbuckets from code"), "{l}");
            }
            assert!(lens_line(&stripped, "goroutines").contains("runtime.allgs from code"));
            assert!(
                field(&stripped, "GC view").contains("live heap"),
                "{stripped}"
            );
        }

        let pie = stdout(&doctor(&[fixture(&v, "allocs-pie").to_str().unwrap()]));
        assert_eq!(field(&pie, "build"), "not stripped, PIE, no cgo");
        let cgo = stdout(&doctor(&[fixture(&v, "allocs-cgo").to_str().unwrap()]));
        assert!(field(&cgo, "build").ends_with(", cgo"), "{cgo}");
    }
    // Not Go: the tracepoint lenses only.
    let o = doctor(&["/bin/true"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        field(&text, "Go").starts_with("no: not a Go binary"),
        "{text}"
    );
    assert!(text.contains("rss and mmap work"));
}

#[test]
fn doctor_reads_a_live_processes_rate() {
    let v = go_versions().pop().unwrap();
    let bin = fixture(&v, "allocs-memprofile");
    let mut p = Bg::spawn(&bin, &["-objects", "1000", "-maps", "1", "-loop"]);
    std::thread::sleep(Duration::from_millis(300));
    let text = stdout(&doctor(&["--pid", &p.pid().to_string()]));
    let want = mem_profile_rate(&bin, p.pid());
    assert!(want > 0);
    assert!(
        field(&text, "MemProfileRate").starts_with(&format!("{want} ")),
        "want {want}: {text}"
    );
    assert!(text.contains(&format!("process {}", p.pid())), "{text}");
    assert!(p.alive());
    // A pid that is gone: one line.
    let gone = doctor(&["--pid", "999999999"]);
    assert_one_line_error(&gone, "999999999");
}

#[test]
fn doctor_never_crashes_on_a_broken_binary() {
    let v = go_versions().pop().unwrap();
    let good = std::fs::read(fixture(&v, "allocs")).unwrap();
    let dir = out_dir("doctor-broken");
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("text".into(), b"#!/bin/sh\necho hi\n".to_vec()),
        ("elf magic only".into(), b"\x7fELF\x02\x01\x01".to_vec()),
    ];
    for frac in [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
        let n = (good.len() as f64 * frac) as usize;
        cases.push((format!("truncated at {n}"), good[..n].to_vec()));
    }
    // Flipped bytes across the file, where the tables live.
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..12 {
        let mut b = good.clone();
        for _ in 0..200 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % b.len();
            b[at] ^= (seed >> 32) as u8 | 1;
        }
        cases.push((format!("corrupted {i}"), b));
    }
    for (name, bytes) in cases {
        let path = dir.join(name.replace(' ', "-"));
        std::fs::write(&path, &bytes).unwrap();
        let o = doctor(&[path.to_str().unwrap()]);
        let code = o.status.code();
        assert!(
            matches!(code, Some(0) | Some(1)),
            "{name}: exit {:?} (crashed?): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        if code == Some(1) {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(err.lines().count(), 1, "{name}: {err}");
            assert!(err.starts_with("memtrace: error: "), "{name}: {err}");
        }
    }
}

#[test]
fn completions_for_every_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef memtrace"),
        ("fish", "complete -c memtrace"),
        ("elvish", "edit:completion:arg-completer[memtrace]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let o = run_memtrace(&["completions", shell], &[]);
        let text = stdout(&o);
        assert!(o.status.success(), "{shell}");
        assert!(text.contains(marker), "{shell}: no {marker}");
        for sub in ["record", "agent", "gate", "diff", "top", "doctor"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // bash really takes it.
    let script = out_dir("completions").join("memtrace.bash");
    std::fs::write(&script, run_memtrace(&["completions", "bash"], &[]).stdout).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p memtrace",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("memtrace"), "{o:?}");
}

#[test]
fn record_help_lists_every_lens_with_its_cost() {
    let o = run_memtrace(&["record", "--help"], &[]);
    let text = stdout(&o);
    for lens in ["rss", "mmap", "alloc", "alloc-exact", "heap", "goroutines"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{lens} ")))
            .unwrap_or_else(|| panic!("--help does not list {lens}:\n{text}"));
        assert!(line.contains("cost:"), "{line}");
    }
}

/// Attributes and elements that would fetch something.
fn fetches(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    [
        "<link",
        "<script src",
        "<img",
        "<iframe",
        "@import",
        "url(http",
        "src=\"http",
        "href=\"http",
    ]
    .iter()
    .filter(|n| lower.contains(*n))
    .map(|n| n.to_string())
    .collect()
}

fn check_page(html: &str, pid: u32, lenses: &[&str]) {
    assert!(
        html.starts_with("<!DOCTYPE html>"),
        "{}",
        &html[..100.min(html.len())]
    );
    assert!(
        fetches(html).is_empty(),
        "the page fetches: {:?}",
        fetches(html)
    );
    assert_eq!(
        html.matches("<svg").count(),
        html.matches("</svg>").count(),
        "unbalanced SVG"
    );
    assert!(html.contains(&format!("pid {pid}")), "no pid");
    assert!(html.contains("go1."), "no Go version");
    assert!(html.contains("dropped"), "no drops");
    for lens in lenses {
        assert!(
            html.contains(&format!("<h2 id=\"{lens}\">")),
            "no {lens} section"
        );
    }
    // The leak, named with its line, in the rss section's flame graph and table.
    let start = html.find("<h2 id=\"rss\">").unwrap();
    let end = html[start + 1..]
        .find("<h2 ")
        .map_or(html.len(), |e| start + 1 + e);
    let rss = &html[start..end];
    assert!(rss.contains("<svg"), "no flame graph");
    assert!(rss.contains("main.cacheSession"), "no leak");
    // The table's first stack is named by the leaking function, not by the
    // runtime frame it ends in.
    let first = rss
        .split("<td class=n>1</td>")
        .nth(1)
        .and_then(|row| row.split("<details>").next())
        .expect("no first row in the rss table");
    assert!(
        first.contains("main.cacheSession"),
        "the first rss row is named {first}"
    );
    assert!(
        rss.contains("main.go</span>") || rss.contains("main.go:"),
        "no line"
    );
}

#[test]
fn index_html_holds_the_whole_report() {
    let v = go_versions().pop().unwrap();
    let mut leak = Bg::spawn(&fixture(&v, "rss"), &["-mode", "leak", "-gc"]);
    let rec = Record::new("index-html")
        .lens("rss,alloc,goroutines")
        .duration("3")
        .pid(leak.pid())
        .ok();
    assert!(leak.alive());
    let html = std::fs::read_to_string(rec.out.join("index.html")).unwrap();
    let pid = rec.summary["targets"][0]["pid"].as_u64().unwrap() as u32;
    check_page(&html, pid, &["rss", "alloc", "goroutines"]);
    for section in ["id=timeline", "id=breakdown", "id=gc", "id=\"rss-net\""] {
        assert!(html.contains(section), "no {section}");
    }
    assert!(html.contains("Go heap") && html.contains("goroutine stacks"));
    let cycles = rec.summary["gc"]["cycles"].as_u64().unwrap();
    assert!(cycles > 0);
    assert!(html.contains(&format!("{cycles} cycles")), "GC view");
    // Top stacks with their lines, as summary.json has them.
    let top = &rec.summary["lenses"]["rss"]["top"][0]["frames"];
    let leaf = top.as_array().unwrap().last().unwrap();
    let line = format!(
        "{} <span class=muted>{}:{}</span>",
        leaf["function"].as_str().unwrap(),
        Path::new(leaf["file"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy(),
        leaf["line"]
    );
    assert!(html.contains(&line), "no {line}");
}

fn tmux(args: &[&str]) -> Output {
    Command::new("tmux")
        .args(["-L", &format!("memtrace-{}", std::process::id())])
        .args(args)
        .output()
        .expect("tmux (cargo xtask bootstrap installs it)")
}

fn capture() -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
}

#[test]
fn top_in_a_terminal_names_the_leak_and_detaches_on_q() {
    let v = go_versions().pop().unwrap();
    let bin = fixture(&v, "rss");
    let mut leak = Bg::spawn(&bin, &["-mode", "leak"]);
    let pid = leak.pid();
    let dir = out_dir("top-tmux");
    let cmd = format!(
        "cd {} && {} top --pid {pid} --interval 1 2>{}",
        dir.display(),
        memtrace().display(),
        dir.join("stderr").display()
    );
    let o = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &cmd,
    ]);
    assert!(o.status.success(), "{o:?}");
    let seen = wait_until(Duration::from_secs(20), || {
        let screen = capture();
        screen.contains(&pid.to_string()) && screen.contains("main.cacheSession main.go:")
    });
    let screen = capture();
    assert!(seen, "{screen}");
    assert!(screen.contains("lens [rss] alloc"), "{screen}");
    // The leaking function is the first of the top stacks, named by the
    // program's own innermost frame (not the runtime's leaf).
    let first = screen
        .lines()
        .find(|l| l.contains("%  "))
        .unwrap_or_default();
    assert!(first.contains("main.cacheSession main.go:"), "{screen}");
    // l: leaf frames, and back.
    tmux(&["send-keys", "-t", "top", "l"]);
    assert!(wait_until(Duration::from_secs(10), || capture()
        .contains("l own frames")));
    tmux(&["send-keys", "-t", "top", "l"]);
    assert!(wait_until(Duration::from_secs(10), || capture()
        .contains("l leaf frames")));
    // Tab: the alloc lens; s: a report.
    tmux(&["send-keys", "-t", "top", "Tab"]);
    assert!(wait_until(Duration::from_secs(10), || capture()
        .contains("lens rss [alloc]")));
    tmux(&["send-keys", "-t", "top", "s"]);
    assert!(wait_until(Duration::from_secs(20), || capture()
        .contains("saved the report so far")));
    let saved: Vec<PathBuf> = std::fs::read_dir(dir.join("memtrace-out"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].join("index.html").exists());
    assert!(saved[0].join("rss.pb.gz").exists());
    // q: gone, detached, the rate put back, the program unharmed.
    tmux(&["send-keys", "-t", "top", "q"]);
    let gone = wait_until(Duration::from_secs(20), || {
        !tmux(&["has-session", "-t", "top"]).status.success()
    });
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert!(gone, "top did not quit on q: {stderr}");
    assert!(
        stderr.contains("stopped (q); every probe detached"),
        "{stderr}"
    );
    assert_no_memtrace_programs();
    assert_eq!(
        mem_profile_rate(&bin, pid),
        0,
        "MemProfileRate not restored"
    );
    assert!(leak.alive());
    let _ = tmux(&["kill-server"]);
}

#[test]
fn top_without_a_terminal_prints_blocks() {
    let v = go_versions().pop().unwrap();
    let mut leak = Bg::spawn(&fixture(&v, "rss"), &["-mode", "leak"]);
    let pid = leak.pid();
    let child = Command::new(memtrace())
        .args(["top", "--pid", &pid.to_string(), "--interval", "0.5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: signalling our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let text = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let blocks = text.matches("memtrace top: ").count();
    assert!(blocks >= 4, "{text}");
    let last = &text[text.rfind("memtrace top: ").unwrap()..];
    assert!(last.contains(&format!("pid {pid} rss: RSS")), "{last}");
    assert!(last.contains("main.cacheSession main.go:"), "{last}");
    assert!(last.contains("net +"), "{last}");
    assert_no_memtrace_programs();
    assert!(leak.alive());
}
