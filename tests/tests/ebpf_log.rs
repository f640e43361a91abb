//! The eBPF programs' log (`--ebpf-log`, or RUST_LOG naming `ebpf`): off
//! by default; on, it says why a stack walk failed, down to the errno and
//! the process.

use memtrace_tests::*;

/// Every stack walk is made to fail with EFAULT (14), a hidden test
/// switch. With the log on, stderr names the reason for the process
/// traced; with it off (the default) nothing is logged, and the failure is
/// still counted and shown in the graph.
#[test]
fn the_ebpf_log_gives_the_reason_a_stack_walk_failed() {
    let v = go_versions().pop().expect("a Go version");
    let bin = fixture(&v, "deepstacks");
    let run = |name: &str, log: Option<&str>, env: Option<&str>| {
        let mut r = Record::new(name)
            .lens("alloc-exact")
            .arg("--inject-stack-errno")
            .arg("14");
        if let Some(flag) = log {
            r = r.arg(flag);
        }
        if let Some(rust_log) = env {
            r = r.env("RUST_LOG", rust_log);
        }
        r.launch(&bin, &["-n", "2000"]).ok()
    };
    let logged = |r: &Recorded| -> Vec<String> {
        r.stderr
            .lines()
            .filter(|l| l.starts_with("memtrace: ebpf: "))
            .map(str::to_string)
            .collect()
    };
    for (name, flag, env) in [
        ("ebpf-log-flag", Some("--ebpf-log"), None),
        ("ebpf-log-rust-log", None, Some("ebpf")),
    ] {
        let r = run(name, flag, env);
        let pid = r.summary["targets"][0]["pid"].as_u64().unwrap();
        let lines = logged(&r);
        let want = format!("memtrace: ebpf: stack walk failed: pid {pid} errno 14");
        assert!(
            lines.iter().any(|l| l.starts_with(&want)),
            "{name}: no `{want}` among {} logged lines: {:?}",
            lines.len(),
            lines.iter().take(5).collect::<Vec<_>>()
        );
        let errors = r.summary["counters"]["stack_errors"].as_u64().unwrap();
        assert!(errors > 0, "{name}: no stack error counted");
        assert_no_memtrace_programs();
    }
    let off = run("ebpf-log-off", None, None);
    assert_eq!(
        logged(&off),
        Vec::<String>::new(),
        "the log is off by default"
    );
    assert!(off.summary["counters"]["stack_errors"].as_u64().unwrap() > 0);
    // The reason is in the summary and on the stop line without the log.
    let why = &off.summary["counters"]["stack_error_reasons"][0];
    assert_eq!(
        (why["errno"].as_u64(), why["reason"].as_str()),
        (Some(14), Some("user stack unreadable")),
        "{why}"
    );
    assert!(
        off.stderr.contains("(errno 14, user stack unreadable: "),
        "{}",
        off.stderr
    );
    let top = off.top("alloc-exact");
    assert!(
        top[0].0.iter().any(|f| f.contains("user stack unreadable")),
        "the graph shows why: {:?}",
        top[0]
    );
    assert_no_memtrace_programs();
}

/// Off, the log costs nothing: the log level is read-only data, so the
/// verifier drops every log statement, and the fault program the kernel
/// runs is smaller than the same program with the log on.
#[test]
fn the_log_off_is_dropped_by_the_verifier() {
    use memtrace_user::kernel::ebpf::Ebpf;
    use memtrace_user::kernel::ProbeTuning;
    use memtrace_user::model::reporter::Collect;
    let size = |ebpf_log: bool| {
        let tuning = ProbeTuning {
            ebpf_log,
            ..ProbeTuning::default()
        };
        let k = Ebpf::load_with(
            memtrace_user::lens::rss::TRACEPOINTS,
            &memtrace_user::host::preflight::tracefs_dir(),
            tuning,
            std::sync::Arc::new(Collect::default()),
        )
        .expect("the rss probes load");
        k.translated_bytes("fault_user")
            .expect("fault_user is loaded")
    };
    let (off, on) = (size(false), size(true));
    eprintln!("fault_user as the kernel runs it: {off} bytes with the log off, {on} with it on");
    assert!(
        off < on,
        "fault_user is {off} bytes with the log off and {on} with it on: the log was not dropped"
    );
    assert_no_memtrace_programs();
}
