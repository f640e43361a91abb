//! Builds `memtrace-ebpf` for the BPF target (nightly + bpf-linker) and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! This does what `aya_build::build_ebpf` does, with one difference: the
//! nested cargo's own output (its "Compiling …" lines, dependency warnings)
//! goes to `OUT_DIR/ebpf-build.log`, not to `cargo:warning=` lines, so a good
//! build is quiet. A failed build prints that log. Compiler warnings in
//! memtrace-ebpf itself are still shown: those are ours to fix.
use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context as _};
use cargo_metadata::{diagnostic::DiagnosticLevel, Message, MetadataCommand};

const EBPF_PACKAGE: &str = "memtrace-ebpf";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=MEMTRACE_EBPF_TOOLCHAIN");
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // Cargo rebuilds us when the eBPF crate's library changes (build
    // dependency); this covers its binary too.
    println!("cargo:rerun-if-changed={root}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let log_path = out_dir.join("ebpf-build.log");
    match build(&out_dir, &log_path) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Build-script stderr is shown by cargo when the script fails.
            if let Ok(log) = fs::read_to_string(&log_path) {
                eprintln!("---- nested eBPF build log ({}) ----", log_path.display());
                eprintln!("{log}");
            }
            Err(e)
        }
    }
}

fn build(out_dir: &Path, log_path: &Path) -> anyhow::Result<()> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    let toolchain = env::var("MEMTRACE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());

    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build"])
        .args(["--package", EBPF_PACKAGE, "--bins", "--release"])
        .args(["--message-format=json", "--target", target])
        .args(["-Z", "build-std=core"]);
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer build's compiler must not leak into the nightly one.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS"] {
        cmd.env_remove(key);
    }
    // A target dir of its own: cargo would otherwise wait on its own lock.
    let target_dir = out_dir.join("ebpf-target");
    cmd.arg("--target-dir").arg(&target_dir);

    let log =
        fs::File::create(log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?)
        .spawn()
        .with_context(|| format!("spawn {cmd:?} (is rustup installed?)"))?;
    let mut log = log;

    let stdout = child.stdout.take().context("nested cargo stdout")?;
    let mut executables = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        match message.context("nested cargo printed invalid JSON")? {
            Message::CompilerArtifact(artifact) => {
                if let Some(exe) = artifact.executable {
                    executables.push((artifact.target.name, exe.into_std_path_buf()));
                }
            }
            Message::CompilerMessage(msg) => {
                let rendered = msg.message.rendered.unwrap_or_default();
                writeln!(log, "{rendered}")?;
                // Warnings in this workspace's path packages (memtrace-ebpf,
                // memtrace-common) are ours to see; errors are in the log.
                let ours = msg.package_id.repr.starts_with("path+")
                    && msg.message.level == DiagnosticLevel::Warning;
                if ours {
                    for line in rendered.lines() {
                        println!("cargo:warning={line}");
                    }
                }
            }
            Message::TextLine(line) => writeln!(log, "{line}")?,
            _ => {}
        }
    }
    let status = child.wait().context("wait for nested cargo")?;
    if !status.success() {
        bail!(
            "building {EBPF_PACKAGE} for {target} failed ({status}); log: {}",
            log_path.display()
        );
    }
    if executables.is_empty() {
        bail!(
            "building {EBPF_PACKAGE} produced no binary; log: {}",
            log_path.display()
        );
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&exe, &dst)
            .with_context(|| format!("copy {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}
