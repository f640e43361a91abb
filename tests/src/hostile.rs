//! Hostile Go binaries made from a real one: each is the fixture with a
//! few bytes changed where a parser must not trust them (the issue's
//! corpus: wrapped counts, offsets past the end, tables out of order, a
//! compressed-DWARF bomb, a truncated file). Everything else stays as the
//! Go toolchain wrote it, so each case reaches the parser it is aimed at.

use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSection as _};

/// One hostile binary.
pub struct Hostile {
    /// What is wrong with it, as a file name.
    pub name: &'static str,
    pub path: PathBuf,
    /// Whether it is refused as a whole (its function table is unusable);
    /// the others are read without the part that is forged.
    pub refused: bool,
}

/// The pcHeader's words (after magic, pad, minLC, ptrSize): `nfunc`,
/// `nfiles`, `textStart`, then the offsets of funcname, cu, file, pc and
/// pcln tables.
const NFUNC: usize = 0;
const FUNCNAME_OFF: usize = 3;
const PCLN_OFF: usize = 7;

fn header(data: &[u8]) -> usize {
    let file = object::File::parse(data).expect("fixture is ELF");
    let s = file
        .section_by_name(".gopclntab")
        .expect("fixture has .gopclntab");
    s.file_range().expect("in the file").0 as usize
}

fn word(data: &[u8], hdr: usize, i: usize) -> u64 {
    let at = hdr + 8 + 8 * i;
    u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
}

fn set_word(data: &mut [u8], hdr: usize, i: usize, v: u64) {
    let at = hdr + 8 + 8 * i;
    data[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The compression header of `.debug_info` (SHF_COMPRESSED): its
/// `ch_size` field's file offset.
fn debug_info_ch_size(data: &[u8]) -> Option<usize> {
    let file = object::File::parse(data).ok()?;
    let s = file.section_by_name(".debug_info")?;
    let (off, _) = s.file_range()?;
    let c = s.compressed_file_range().ok()?;
    (c.format != object::CompressionFormat::None).then_some(())?;
    // Elf64_Chdr: ch_type u32, ch_reserved u32, ch_size u64, ch_addralign.
    Some(off as usize + 8)
}

/// Writes the corpus made from `fixture` (a Go binary with compressed
/// DWARF) into `dir`.
pub fn corpus(fixture: &Path, dir: &Path) -> Vec<Hostile> {
    std::fs::create_dir_all(dir).unwrap();
    let orig = std::fs::read(fixture).unwrap();
    let hdr = header(&orig);
    let nfunc = word(&orig, hdr, NFUNC);
    let pcln = word(&orig, hdr, PCLN_OFF);
    let mut out = Vec::new();
    let mut add = |name: &'static str, refused: bool, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut d = orig.clone();
        edit(&mut d);
        let path = dir.join(name);
        std::fs::write(&path, &d).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        out.push(Hostile {
            name,
            path,
            refused,
        });
    };
    // 2^61 + n functions: 8 * nfunc wraps to 8 * n.
    add("wrapped-nfunc", true, &|d| {
        set_word(d, hdr, NFUNC, (1 << 61) + nfunc)
    });
    // The function table's offset wraps the address space back into the file.
    add("wrapped-offset", true, &|d| {
        set_word(d, hdr, PCLN_OFF, (hdr as u64).wrapping_neg() + 64)
    });
    add("offset-past-end", true, &|d| {
        let len = d.len() as u64;
        set_word(d, hdr, FUNCNAME_OFF, len * 2)
    });
    // More functions than bytes to hold them.
    add("huge-nfunc", true, &|d| {
        set_word(d, hdr, NFUNC, u64::from(u32::MAX))
    });
    // The function table pointing back on itself: entries out of order.
    add("unordered-ftab", true, &|d| {
        let ftab = hdr + pcln as usize;
        let n = (nfunc as usize).min(64);
        for i in 0..n {
            let at = ftab + 8 * i;
            d[at..at + 4].copy_from_slice(&(u32::MAX - i as u32).to_le_bytes());
        }
    });
    add("truncated", true, &|d| {
        let half = d.len() / 2;
        d.truncate(half)
    });
    if let Some(at) = debug_info_ch_size(&orig) {
        // A terabyte declared by a few hundred kilobytes of zlib.
        add("dwarf-bomb", false, &|d| {
            d[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes())
        });
    }
    out
}

/// A finished command: its output, how long it ran and its peak resident
/// memory (`ru_maxrss`, from `wait4`).
pub struct Measured {
    pub out: std::process::Output,
    pub elapsed: std::time::Duration,
    pub max_rss_kib: u64,
}

/// Runs `cmd` to its end (killed after `timeout`, which fails the test).
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also gives its rusage"
)]
pub fn measured(mut cmd: std::process::Command, timeout: std::time::Duration) -> Measured {
    use std::io::Read as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Stdio;
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child, with valid out pointers.
        unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = tx.send((status, usage.ru_maxrss as u64));
    });
    let Ok((status, max_rss_kib)) = rx.recv_timeout(timeout) else {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("{cmd:?} did not finish within {timeout:?}");
    };
    let elapsed = start.elapsed();
    Measured {
        out: std::process::Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        },
        elapsed,
        max_rss_kib,
    }
}
