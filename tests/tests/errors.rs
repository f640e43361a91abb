//! Every bad input ends with one actionable line and exit code 1.

use memtrace_tests::*;

fn newest() -> String {
    go_versions().pop().unwrap()
}

#[test]
fn missing_pid() {
    let o = run_memtrace(&["record", "--pid", "999999999", "--duration", "1"], &[]);
    assert_one_line_error(&o, "no process with pid 999999999");
}

#[test]
fn non_go_binary_launched() {
    let o = run_memtrace(&["record", "--", "/bin/true"], &[]);
    assert_one_line_error(&o, "/bin/true is not a Go binary");
}

#[test]
fn non_go_process_attached() {
    let mut bg = Bg::spawn(std::path::Path::new("/bin/sleep"), &["30"]);
    let o = run_memtrace(
        &["record", "--pid", &bg.pid().to_string(), "--duration", "1"],
        &[],
    );
    assert_one_line_error(&o, "is not a Go binary");
    assert!(bg.alive());
}

#[test]
fn command_not_found() {
    let o = run_memtrace(&["record", "--", "/no/such/program"], &[]);
    assert_one_line_error(&o, "command not found: /no/such/program");
}

/// Stripped binaries trace every lens (see stripped.rs): the runtime's
/// variables are found from the code that uses them. Where that code is
/// not what memtrace expects (here a copy of a stripped build in which
/// `runtime.mProf_FlushLocked` is renamed, so one of the two functions
/// that must agree on `runtime.mbuckets` is gone), the lens that needs the
/// variable refuses, in one line, saying which and why; it never guesses.
#[test]
fn stripped_go_binary_whose_code_does_not_give_a_variable_away() {
    let data = std::fs::read(fixture(&newest(), "allocs-stripped")).unwrap();
    let (from, to) = (
        b"runtime.mProf_FlushLocked\0",
        b"runtime.mProf_FlushLockeX\0",
    );
    let mut patched = data.clone();
    let mut hits = 0;
    let mut i = 0;
    while let Some(p) = patched[i..].windows(from.len()).position(|w| w == from) {
        let at = i + p;
        patched[at..at + to.len()].copy_from_slice(to);
        hits += 1;
        i = at + to.len();
    }
    assert_eq!(hits, 1, "the function's name once, in pclntab");
    let path = out_dir("renamed-witness").join("allocs");
    std::fs::write(&path, &patched).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = run_memtrace(
        &["record", "--lens", "heap", "--", path.to_str().unwrap()],
        &[],
    );
    assert_one_line_error(
        &o,
        "is stripped (built with -ldflags=-s), and the alloc and heap lenses cannot do without runtime.mbuckets, \
         which its code did not give away (runtime.mbuckets: fewer than two of the functions that use it",
    );
    // The other lenses still work on it.
    let o = run_memtrace(
        &[
            "record",
            "--lens",
            "alloc-exact",
            "--",
            path.to_str().unwrap(),
            "-objects",
            "10",
            "-maps",
            "0",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A Go release older than memtrace supports (the build info of a copy is
/// rewritten to say go1.17, keeping its length).
#[test]
fn unsupported_go_version() {
    let v = newest();
    let data = std::fs::read(fixture(&v, "allocs")).unwrap();
    let from = format!("go{v}");
    let to = format!("go1.17{}", &from[6..]);
    assert_eq!(from.len(), to.len());
    // Every copy: runtime.buildVersion and the one in .go.buildinfo.
    let mut patched = data.clone();
    let mut hits = 0;
    let mut i = 0;
    while let Some(p) = patched[i..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        let at = i + p;
        patched[at..at + to.len()].copy_from_slice(to.as_bytes());
        hits += 1;
        i = at + to.len();
    }
    assert!(hits > 0, "no version string in the binary");
    let dir = out_dir("old-go");
    let path = dir.join("old");
    std::fs::write(&path, &patched).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = run_memtrace(&["record", "--", path.to_str().unwrap()], &[]);
    assert_one_line_error(&o, "was built with go1.17");
}

/// Without CAP_SYS_ADMIN the kernel refuses uprobes (this is why the
/// DaemonSet asks for it): one line that says so.
#[test]
fn uprobes_without_sys_admin_are_refused_clearly() {
    let mut bg = Bg::spawn(
        &fixture(&newest(), "allocs"),
        &["-objects", "10", "-maps", "0", "-loop"],
    );
    let caps = "-all,+bpf,+perfmon,+sys_ptrace";
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--bounding-set={caps}"))
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg("--")
        .arg(memtrace())
        .args(["record", "--pid", &bg.pid().to_string(), "--duration", "1"]);
    let o = wait_output(cmd, std::time::Duration::from_secs(30));
    assert_one_line_error(&o, "the kernel refused the uprobe");
    assert!(String::from_utf8_lossy(&o.stderr).contains("CAP_SYS_ADMIN"));
    assert!(bg.alive());
    assert_no_memtrace_programs();
}

#[test]
fn missing_privileges_names_the_capabilities() {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--",
    ])
    .arg(memtrace())
    .args(["record", "--pid", "1", "--duration", "1"]);
    let o = wait_output(cmd, std::time::Duration::from_secs(30));
    assert_one_line_error(&o, "missing privileges");
    let line = String::from_utf8_lossy(&o.stderr);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"] {
        assert!(line.contains(cap), "{line}");
    }
}

#[test]
fn missing_tracefs() {
    let o = run_memtrace(
        &["record", "--pid", "1", "--duration", "1"],
        &[("MEMTRACE_TRACEFS", "/nonexistent/tracefs")],
    );
    assert_one_line_error(&o, "tracefs is not available at /nonexistent/tracefs");
}

#[test]
fn missing_btf() {
    let o = run_memtrace(
        &["record", "--pid", "1", "--duration", "1"],
        &[("MEMTRACE_BTF", "/nonexistent/vmlinux")],
    );
    assert_one_line_error(&o, "kernel BTF is missing");
}

#[test]
fn neither_pid_nor_command() {
    let o = run_memtrace(&["record", "--duration", "1"], &[]);
    assert_one_line_error(&o, "give either --pid PID");
}

#[test]
fn unknown_lens() {
    let o = run_memtrace(&["record", "--lens", "bogus", "--pid", "1"], &[]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("unknown lens `bogus`"), "{stderr}");
}
