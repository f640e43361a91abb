//! `memtrace doctor [--pid PID | BINARY]`: whether this host can trace, each
//! check with its fix; and for a binary or process, what each lens can do
//! with it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::binary::file::FileBytes;
use crate::binary::goruntime::GoBinary;
use crate::engine::Options;
use crate::front::doctor::{self, Check, HostFacts, Status, Tracefs};
use crate::host::remote::{ProcessMemory, RemoteMemory as _};
use crate::kernel::ebpf::Ebpf;
use crate::model::error::TargetError;
use crate::model::lens::Lens;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// A running process to examine (its binary, and its MemProfileRate).
    #[arg(long, value_name = "PID", conflicts_with = "binary")]
    pub pid: Option<u32>,
    /// A binary to examine.
    pub binary: Option<PathBuf>,
}

/// What was learned about the binary or process asked about.
enum Subject {
    Go {
        bin: Box<GoBinary>,
        pid: Option<u32>,
        rate: Option<Result<u64, String>>,
    },
    /// An executable that is not Go: only the tracepoint lenses apply.
    NotGo { path: PathBuf, pid: Option<u32> },
}

/// Reads the binary first, so a bad one is a one-line error before any
/// report.
fn examine(args: &DoctorArgs) -> anyhow::Result<Option<Subject>> {
    let (path, shown, pid) = match (args.pid, &args.binary) {
        (Some(pid), _) => {
            crate::host::procfs::check_pid(pid)?;
            let exe = crate::host::procfs::exe_path(pid)?;
            (
                crate::host::procfs::proc_dir(pid).join("exe"),
                exe,
                Some(pid),
            )
        }
        (None, Some(p)) => (p.clone(), p.clone(), None),
        (None, None) => return Ok(None),
    };
    let data = FileBytes::open(&path).with_context(|| {
        format!(
            "cannot read {}: give a readable executable",
            shown.display()
        )
    })?;
    if let Err(e) = object::File::parse(&*data) {
        bail!(
            "{} is not an executable memtrace can read ({e}): give an ELF binary",
            shown.display()
        );
    }
    let parsed = GoBinary::parse(&shown, data.clone());
    data.release();
    match parsed {
        Ok(bin) => {
            let rate = pid.map(|pid| read_rate(&bin, pid, &shown));
            Ok(Some(Subject::Go {
                bin: Box::new(bin),
                pid,
                rate,
            }))
        }
        Err(TargetError::NotGo(_)) => Ok(Some(Subject::NotGo { path: shown, pid })),
        Err(e) => Err(e.into()),
    }
}

/// The process's `runtime.MemProfileRate`, read from its memory.
fn read_rate(bin: &GoBinary, pid: u32, exe: &Path) -> Result<u64, String> {
    let vaddr =
        bin.mem_profile_rate
            .ok_or_else(|| match bin.found.get("runtime.MemProfileRate") {
                Some(Err(why)) => format!("runtime.MemProfileRate was not found: {why}"),
                _ => "runtime.MemProfileRate was not found".to_string(),
            })?;
    let maps = crate::host::procfs::read_maps(pid).ok_or("cannot read its memory maps")?;
    let exe_maps: Vec<_> = maps
        .into_iter()
        .filter(|m| m.path.as_deref() == Some(exe))
        .collect();
    let addr = bin
        .runtime_addr(vaddr, &exe_maps)
        .ok_or("its executable is not mapped where expected")?;
    let mem = ProcessMemory::open(pid).map_err(|e| e.to_string())?;
    mem.read_u64(addr).map_err(|e| e.to_string())
}

/// The file offset of this executable's entry point, where a test uprobe
/// never fires again.
fn own_entry() -> anyhow::Result<(PathBuf, u64)> {
    use object::{Object as _, ObjectSegment as _};
    let exe = PathBuf::from("/proc/self/exe");
    let data = std::fs::read(&exe)?;
    let file = object::File::parse(&*data)?;
    let entry = file.entry();
    let seg = file
        .segments()
        .find(|s| (s.address()..s.address() + s.size()).contains(&entry))
        .context("the entry point is in no segment")?;
    Ok((exe, entry - seg.address() + seg.file_range().0))
}

/// Loads the eBPF object, attaches a tracepoint and a uprobe, and lets go.
fn live_check(facts: &HostFacts) -> Check {
    let name = "eBPF";
    if !matches!(facts.tracefs, Tracefs::Mounted(_)) {
        return Check {
            name,
            status: Status::Warn,
            detail: "not tried: tracefs is not available (see above)".into(),
            fix: Some("fix tracefs first (memtrace mounts it itself when it can)".into()),
        };
    }
    let r = (|| -> anyhow::Result<()> {
        let tp = crate::engine::DISCOVERY[1];
        let mut k = Ebpf::load(&[tp], &crate::host::preflight::tracefs_dir())?;
        let (exe, off) = own_entry()?;
        k.try_uprobe(&exe, off)?;
        Ok(())
    })();
    match r {
        Ok(()) => Check {
            name,
            status: Status::Pass,
            detail: "the programs load; a tracepoint and a uprobe attach".into(),
            fix: None,
        },
        Err(e) => Check {
            name,
            status: Status::Fail,
            detail: {
                let (top, root) = (e.to_string(), e.root_cause().to_string());
                if top.contains(&root) {
                    top
                } else {
                    format!("{top}: {root}")
                }
            },
            fix: Some(
                "fix the failures above; as root on a 5.8+ kernel with BTF this works".into(),
            ),
        },
    }
}

fn print_check(c: &Check) {
    println!("  {:<5} {:<20} {}", c.status.label(), c.name, c.detail);
    if c.status != Status::Pass {
        if let Some(fix) = &c.fix {
            println!("  {:<5} {:<20} fix: {fix}", "", "");
        }
    }
}

fn print_subject(s: &Subject) {
    let (path, pid) = match s {
        Subject::Go { bin, pid, .. } => (bin.path.as_path(), *pid),
        Subject::NotGo { path, pid } => (path.as_path(), *pid),
    };
    match pid {
        Some(pid) => println!("\nprocess {pid} ({})", path.display()),
        None => println!("\nbinary {}", path.display()),
    }
    let row = |k: &str, v: &str| println!("  {k:<15} {v}");
    match s {
        Subject::NotGo { .. } => {
            row("Go", "no: not a Go binary");
            row(
                "lenses",
                "rss and mmap work (page faults and memory syscalls, any process); \
                 alloc, alloc-exact, heap and goroutines need a Go program",
            );
        }
        Subject::Go { bin, rate, .. } => {
            let module = bin.module.as_deref().unwrap_or("(no module recorded)");
            row("Go", &format!("{}, module {module}", bin.go_version));
            row(
                "build",
                &format!(
                    "{}, {}, {}",
                    if bin.stripped {
                        "stripped"
                    } else {
                        "not stripped"
                    },
                    if bin.pie { "PIE" } else { "not PIE" },
                    if doctor::uses_cgo(bin) {
                        "cgo"
                    } else {
                        "no cgo"
                    }
                ),
            );
            row("allocators", &doctor::allocators(bin));
            row(
                "GC view",
                &match &bin.gc {
                    Ok(_) => "yes (cycles, pauses, live heap)".to_string(),
                    Err(e) => format!("no: {e}"),
                },
            );
            row(
                "pprof labels",
                &match (bin.labels, bin.g_layout) {
                    (Some(f), _) => {
                        format!(
                            "copied the first time an event runs under each ({} label sets{})",
                            match f {
                                crate::binary::labels::Format::Map => "Go 1.19-1.23 map",
                                crate::binary::labels::Format::Slice => "slice",
                            },
                            if bin.m_curg.is_some() {
                                "; on the system stack, the running goroutine's"
                            } else {
                                ""
                            }
                        )
                    }
                    (None, Some(_)) => {
                        "none: the program cannot set any (no runtime/pprof.runtime_setProfLabel)"
                            .to_string()
                    }
                    (None, None) => "not read: runtime.g's layout is unknown".to_string(),
                },
            );
            if let Some(rate) = rate {
                row(
                    "MemProfileRate",
                    &match rate {
                        Ok(0) => "0: the program does not sample its allocations; alloc and heap set --memprofile-rate for the window".to_string(),
                        Ok(r) => format!("{r} (bytes per sample)"),
                        Err(e) => format!("unknown: {e}"),
                    },
                );
            }
            println!("  lenses");
            for (lens, r) in doctor::lens_support(bin, rate.is_some()) {
                match r {
                    Ok(why) => println!("    {:<12} works: {why}", lens.name()),
                    Err(why) => println!("    {:<12} no: {why}", lens.name()),
                }
            }
        }
    }
}

/// Runs the checks; exit 0 when the host can trace, 1 when it cannot.
pub fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let subject = examine(&args)?;
    let mut opts = Options::new(Lens::ALL.to_vec());
    opts.discovery = true;
    let tracepoints: Vec<String> = opts.tracepoints().iter().map(|t| t.path()).collect();
    let facts = HostFacts::gather(&tracepoints);
    let mut checks = doctor::host_checks(&facts);
    checks.push(live_check(&facts));
    println!("memtrace doctor\n\nhost");
    for c in &checks {
        print_check(c);
    }
    if let Some(s) = &subject {
        print_subject(s);
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed == 0 {
        println!("\nthe host can trace");
        Ok(0)
    } else {
        println!("\nthe host cannot trace: fix the {failed} FAIL line(s) above");
        Ok(1)
    }
}
