//! Project automation: `cargo xtask bootstrap | fixtures | demo | test | image`.
//!
//! Every command first runs the bootstrap, which installs what a fresh Debian
//! machine lacks (see ../shared/TOOLCHAIN.md) and skips what is already there.

mod bench;
mod bootstrap;
mod fixtures;
mod fuzz;
mod image;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchains and system packages the build and tests need.
    Bootstrap,
    /// Build the agent's container image (FROM scratch, nothing pulled),
    /// tagged localhost/memtrace:VERSION.
    Image,
    /// Build the Go test fixtures for the tested Go versions.
    Fixtures {
        /// Every Go version in the matrix, not only the CI set.
        #[arg(long)]
        all_go: bool,
    },
    /// Build everything, run the leaking demo service, trace it for ~10 s and
    /// write flame graphs to ./memtrace-out/.
    Demo {
        /// Seconds to trace.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Measure each lens's slowdown on an allocation-heavy Go fixture, the
    /// symbolizer, the agent's cost on many services, and memtrace gate's
    /// error rates.
    Bench {
        /// Gates per case for the gate's error rates (0: skip them).
        #[arg(long, default_value_t = 20)]
        gate_trials: usize,
        /// Only the gate's error rates.
        #[arg(long)]
        gate_only: bool,
        /// Only the agent's cost (services traced at once).
        #[arg(long)]
        agent_only: bool,
        /// Only the stack cache's and the unchecked fault runs' misattribution.
        #[arg(long)]
        stack_cache_only: bool,
        /// Only alloc-exact on Go 1.19 beside the newest Go.
        #[arg(long)]
        versions_only: bool,
        /// Only alloc-exact against the alloc lens on Debian's prometheus.
        #[arg(long)]
        service_only: bool,
        /// Only the lens table's GC-heavy shape.
        #[arg(long)]
        gc_heavy_only: bool,
        /// Only the lens table (every shape).
        #[arg(long)]
        lenses_only: bool,
        /// Only what reading pprof labels costs.
        #[arg(long)]
        labels_only: bool,
        /// Only the agent's peak memory with 20 distinct large Go binaries.
        #[arg(long)]
        binaries_only: bool,
        /// Busy Go services in the agent bench's pushing scenario.
        #[arg(long, default_value_t = 100)]
        agent_procs: usize,
    },
    /// Write the man pages (clap_mangen) into target/man/.
    Man,
    /// Fuzz the parsers of untrusted input (cargo-fuzz), every target or one.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        secs: u64,
        /// Only this target (go_binary, buildinfo, procfs, kubelet, pprof, go_memory).
        target: Option<String>,
    },
    /// Lint, then run every unit and end-to-end test (as root).
    Test {
        /// Run the end-to-end tests against every Go version in the matrix.
        #[arg(long)]
        all_go: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Bootstrap => bootstrap::install(&root),
        Cmd::Fixtures { all_go } => {
            let env = bootstrap::run_env(&root)?;
            fixtures::build(&root, &env, &bootstrap::versions(all_go))?;
            Ok(())
        }
        Cmd::Demo { secs } => demo(&root, secs),
        Cmd::Image => {
            bootstrap::run_env(&root)?;
            let memtrace = build_memtrace(&root)?;
            image::build(&root, &memtrace).map(|_| ())
        }
        Cmd::Fuzz { secs, target } => {
            let env = bootstrap::run_env(&root)?;
            let built = fixtures::build(&root, &env, &bootstrap::versions(false))?;
            fuzz::run_all(&root, &built, secs, target.as_deref())
        }
        Cmd::Man => {
            bootstrap::run_env(&root)?;
            let memtrace = build_memtrace(&root)?;
            let dir = root.join("target/man");
            run(Command::new(memtrace).arg("man").arg(&dir))?;
            eprintln!(
                "xtask: man pages in {} (man -l {}/memtrace.1)",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Cmd::Test { all_go } => test(&root, all_go),
        Cmd::Bench {
            gate_trials,
            gate_only,
            agent_only,
            agent_procs,
            stack_cache_only,
            versions_only,
            service_only,
            gc_heavy_only,
            lenses_only,
            labels_only,
            binaries_only,
        } => {
            let env = bootstrap::run_env(&root)?;
            let memtrace = build_memtrace(&root)?;
            let built = fixtures::build(&root, &env, &[bootstrap::newest(), "1.19"])?;
            let out = root.join("target/bench-out");
            std::fs::create_dir_all(&out)?;
            if versions_only {
                return bench::versions::alloc_exact_by_version(&memtrace, &built.root, &out);
            }
            if service_only {
                return bench::service::prometheus(&memtrace, &out);
            }
            if labels_only {
                return bench::labels::run(&memtrace, &built.dir, &out);
            }
            if binaries_only {
                return bench::binaries::run(&memtrace, &out, 20);
            }
            if gc_heavy_only || lenses_only {
                return bench::lenses::run(&memtrace, &built.dir, &out, gc_heavy_only);
            }
            if gate_only {
                return bench::gate(&memtrace, &built.dir, &out, gate_trials);
            }
            if stack_cache_only {
                bench::stack_cache(&memtrace, &built.dir, &out)?;
                return bench::run_check(&memtrace, &built.dir, &out);
            }
            if agent_only {
                for sc in bench::agent::agent_scenarios(agent_procs) {
                    bench::agent::agent(&memtrace, &built.dir, &out, &sc)?;
                }
                return Ok(());
            }
            bench::lenses::run(&memtrace, &built.dir, &out, false)?;
            bench::labels::run(&memtrace, &built.dir, &out)?;
            bench::versions::alloc_exact_by_version(&memtrace, &built.root, &out)?;
            bench::service::prometheus(&memtrace, &out)?;
            run(cargo().current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "memtrace-user",
                "--example",
                "symbolize_bench",
            ]))?;
            bench::symbolize(
                &root.join("target/release/examples/symbolize_bench"),
                &built.dir,
            )?;
            bench::stack_cache(&memtrace, &built.dir, &out)?;
            bench::run_check(&memtrace, &built.dir, &out)?;
            for sc in bench::agent::agent_scenarios(agent_procs) {
                bench::agent::agent(&memtrace, &built.dir, &out, &sc)?;
            }
            bench::binaries::run(&memtrace, &out, 20)?;
            bench::gate(&memtrace, &built.dir, &out, gate_trials)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, streaming its output, and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn build_memtrace(root: &Path) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "memtrace-user"])
        .stderr(Stdio::piped())
        .output()
        .context("running cargo build")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    if !out.status.success() {
        bail!("cargo build --release failed ({})", out.status);
    }
    // Issue 32: a good build says nothing that looks like a problem; the
    // nested eBPF build keeps its output in a log (memtrace-user/build.rs).
    let warnings = loud_lines(&stderr);
    if !warnings.is_empty() {
        bail!(
            "cargo build --release printed {} warning line(s), first: {}",
            warnings.len(),
            warnings[0]
        );
    }
    Ok(root.join("target/release/memtrace"))
}

/// The lines of a cargo build's output that a reader takes for problems.
fn loud_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("warning"))
        .collect()
}

fn demo(root: &Path, secs: u64) -> anyhow::Result<()> {
    let env = bootstrap::run_env(root)?;
    let memtrace = build_memtrace(root)?;
    let go = bootstrap::newest();
    let built = fixtures::build(root, &env, &[go])?;
    let demo_bin = built.dir.join("demo");
    eprintln!("xtask: starting the demo service {}", demo_bin.display());
    let mut child = Command::new(&demo_bin)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", demo_bin.display()))?;
    std::thread::sleep(Duration::from_millis(500));
    let out = root.join("memtrace-out");
    let result = run(Command::new(&memtrace).args([
        "record",
        "--pid",
        &child.id().to_string(),
        "--lens",
        "rss,mmap,alloc-exact",
        "--duration",
        &secs.to_string(),
        "--out",
        &out.to_string_lossy(),
    ]));
    let _ = child.kill();
    let _ = child.wait();
    result?;
    eprintln!("xtask: flame graphs are in {}", out.display());
    Ok(())
}

/// Crates built for the host; the end-to-end tests come last.
const HOST_CRATES: &[&str] = &[
    "memtrace-common",
    "memtrace-user",
    "xtask",
    "memtrace-tests",
];

/// `-p NAME` for each crate.
fn packages(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| ["-p".to_string(), n.to_string()])
        .collect()
}

/// Seconds of fuzzing per target in `cargo xtask test`.
const FUZZ_SECS: u64 = 20;

fn test(root: &Path, all_go: bool) -> anyhow::Result<()> {
    let env = bootstrap::run_env(root)?;
    run(cargo()
        .current_dir(root)
        .args(["fmt", "--all", "--", "--check"]))?;
    run(cargo()
        .current_dir(root)
        .arg("clippy")
        .args(packages(HOST_CRATES))
        .args(["--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate only builds for the BPF target, so it has its own run.
    run(Command::new("rustup")
        .current_dir(root.join("memtrace-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))?;
    let memtrace = build_memtrace(root)?;
    // The DaemonSet's container test runs the image `cargo xtask image` makes.
    let image = image::build(root, &memtrace)?;
    let versions = bootstrap::versions(all_go);
    let built = fixtures::build(root, &env, &versions)?;
    // Unit tests; the end-to-end crate runs next, with its environment.
    let mut tally = Tally::default();
    tally.run(
        cargo()
            .current_dir(root)
            .arg("test")
            .args(packages(&HOST_CRATES[..3])),
    )?;
    tally.run(
        cargo()
            .current_dir(root)
            .args([
                "test",
                "--release",
                "--no-fail-fast",
                "-p",
                "memtrace-tests",
                "--",
                "--test-threads=1",
            ])
            .env("MEMTRACE_BIN", &memtrace)
            .env("MEMTRACE_IMAGE", &image)
            .env("MEMTRACE_FIXTURES", &built.root)
            .env("MEMTRACE_GO_VERSIONS", versions.join(","))
            .env("MEMTRACE_GO", &built.go_for_tools)
            .env(
                "MEMTRACE_KUBE_VALIDATE",
                bootstrap::kube_validate_bin(&env.cache),
            ),
    )?;
    println!("{} passed, {} failed", tally.passed, tally.failed);
    // A bounded fuzzing run of every parser of untrusted input.
    fuzz::run_all(root, &built, FUZZ_SECS, None)?;
    Ok(())
}

/// Sums cargo test's per-binary "test result:" lines while passing the
/// output through, so the run closes with one total.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn run(&mut self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::io::BufRead as _;
        eprintln!("xtask: $ {}", show(cmd));
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().expect("piped");
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |key: &str| {
                    rest.split(';')
                        .find_map(|p| {
                            p.trim()
                                .strip_suffix(key)?
                                .split_whitespace()
                                .last()?
                                .parse::<u64>()
                                .ok()
                        })
                        .unwrap_or(0)
                };
                self.passed += count("passed");
                self.failed += count("failed");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{} failed with {status}", show(cmd));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::loud_lines;

    #[test]
    fn loud_lines_are_the_warnings() {
        let quiet = "   Compiling memtrace-user v0.1.0\n    Finished `release` profile\n";
        assert!(loud_lines(quiet).is_empty());
        let loud =
            "   Compiling memtrace-user v0.1.0\nwarning: memtrace-user@0.1.0:    Compiling core\n";
        assert_eq!(loud_lines(loud).len(), 1);
    }
}
