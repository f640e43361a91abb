//! The kernel's tracepoint `format` files (under tracefs
//! `events/CATEGORY/NAME/format`), read at load to find the fields the
//! probes read, instead of trusting offsets compiled into them.
//!
//! ```text
//! name: sys_enter_mmap
//! format:
//!     field:unsigned short common_type;    offset:0;    size:2;    signed:0;
//!     ...
//!     field:unsigned long addr;    offset:16;    size:8;    signed:0;
//! ```

use std::path::Path;

use memtrace_common::TracepointOffsets;

/// A field the probes need is missing or laid out differently.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "tracepoint {tracepoint} has no field `{field}` of {size} bytes: this kernel's \
         layout is not supported"
    )]
    Field {
        tracepoint: String,
        field: String,
        size: u64,
    },
    #[error(
        "tracepoint {tracepoint}'s arguments are not laid out at 8-byte steps: this \
         kernel's layout is not supported"
    )]
    Layout { tracepoint: String },
}

/// One `field:` line: name, offset, size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Parses the `field:` lines of a format file.
pub fn parse(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let mut decl = None;
            let (mut offset, mut size) = (None, None);
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d.trim());
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.trim().parse().ok();
                }
            }
            // The name is the declaration's last word, without array bounds.
            let name = decl?.rsplit([' ', '*']).next()?.split('[').next()?;
            Some(Field {
                name: name.to_string(),
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

fn field(fields: &[Field], tracepoint: &str, name: &str, size: u64) -> Result<u64, FormatError> {
    fields
        .iter()
        .find(|f| f.name == name && f.size == size)
        .map(|f| f.offset)
        .ok_or_else(|| FormatError::Field {
            tracepoint: tracepoint.to_string(),
            field: name.to_string(),
            size,
        })
}

/// The offsets the probes read, from the format files `read` returns
/// (`None` for a tracepoint this kernel lacks). Tracepoints memtrace does
/// not use in this session may be absent; the defaults stand for them.
pub fn offsets(read: &dyn Fn(&str) -> Option<String>) -> Result<TracepointOffsets, FormatError> {
    let mut out = TracepointOffsets::DEFAULT;
    if let Some(text) = read("syscalls/sys_enter_mmap") {
        let tp = "syscalls:sys_enter_mmap";
        out.syscall_args = words(&parse(&text), tp, &["addr", "len", "prot", "flags"])?;
    }
    if let Some(text) = read("syscalls/sys_exit_mmap") {
        out.syscall_ret = field(&parse(&text), "syscalls:sys_exit_mmap", "ret", 8)?;
    }
    if let Some(text) = read("sched/sched_process_exit") {
        let f = parse(&text);
        out.exit_group_dead = f
            .iter()
            .find(|f| f.name == "group_dead" && f.size == 1)
            .map_or(0, |f| f.offset);
    }
    if let Some(text) = read("oom/mark_victim") {
        let tp = "oom:mark_victim";
        let f = parse(&text);
        out.oom_pid = field(&f, tp, "pid", 4)?;
        out.oom_anon_rss = words(&f, tp, &["anon_rss", "file_rss", "shmem_rss"])?;
    }
    Ok(out)
}

/// The offset of the first of `names`, 8-byte fields that must follow one
/// another (a probe reads them at 8-byte steps from the first).
fn words(f: &[Field], tp: &str, names: &[&str]) -> Result<u64, FormatError> {
    let at: Vec<u64> = names
        .iter()
        .map(|n| field(f, tp, n, 8))
        .collect::<Result<_, _>>()?;
    if at.windows(2).any(|w| w[1] != w[0] + 8) {
        return Err(FormatError::Layout {
            tracepoint: tp.to_string(),
        });
    }
    Ok(at[0])
}

/// [`offsets`] from the format files under `tracefs`.
pub fn read_offsets(tracefs: &Path) -> Result<TracepointOffsets, FormatError> {
    offsets(&|tp| std::fs::read_to_string(tracefs.join("events").join(tp).join("format")).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTER_MMAP: &str = "name: sys_enter_mmap
ID: 100
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long len;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long prot;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long flags;\toffset:40;\tsize:8;\tsigned:0;
\tfield:unsigned long fd;\toffset:48;\tsize:8;\tsigned:0;
\tfield:unsigned long off;\toffset:56;\tsize:8;\tsigned:0;

print fmt: \"addr: 0x%08lx\"
";

    #[test]
    fn parses_fields() {
        let f = parse(ENTER_MMAP);
        assert_eq!(f.len(), 10);
        assert_eq!(
            f[4],
            Field {
                name: "addr".into(),
                offset: 16,
                size: 8
            }
        );
        let arr = parse("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;");
        assert_eq!(arr[0].name, "comm");
        let ptr = parse("\tfield:const char * filename;\toffset:8;\tsize:8;\tsigned:0;");
        assert_eq!(ptr[0].name, "filename");
    }

    #[test]
    fn offsets_from_this_layout_and_another() {
        let exit = "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;";
        let sched = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;";
        let read = |tp: &str| match tp {
            "syscalls/sys_enter_mmap" => Some(ENTER_MMAP.to_string()),
            "syscalls/sys_exit_mmap" => Some(exit.to_string()),
            "sched/sched_process_exit" => Some(sched.to_string()),
            _ => None,
        };
        assert_eq!(offsets(&read).unwrap(), TracepointOffsets::DEFAULT);
        // A kernel that moved the arguments: followed, not misread.
        let moved = ENTER_MMAP
            .replace("offset:16;", "offset:24;")
            .replace(
                "offset:24;\tsize:8;\tsigned:0;\n\tfield:unsigned long prot",
                "offset:32;\tsize:8;\tsigned:0;\n\tfield:unsigned long prot",
            )
            .replace(
                "offset:32;\tsize:8;\tsigned:0;\n\tfield:unsigned long flags",
                "offset:40;\tsize:8;\tsigned:0;\n\tfield:unsigned long flags",
            )
            .replace(
                "offset:40;\tsize:8;\tsigned:0;\n\tfield:unsigned long fd",
                "offset:48;\tsize:8;\tsigned:0;\n\tfield:unsigned long fd",
            );
        let read_moved = |tp: &str| (tp == "syscalls/sys_enter_mmap").then(|| moved.clone());
        assert_eq!(offsets(&read_moved).unwrap().syscall_args, 24);
        // A tracepoint without group_dead: 0, the probe's fallback.
        let old_sched = |tp: &str| {
            (tp == "sched/sched_process_exit")
                .then(|| "\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;".to_string())
        };
        assert_eq!(offsets(&old_sched).unwrap().exit_group_dead, 0);
        // Missing or odd fields are refused.
        let broken = |tp: &str| {
            (tp == "syscalls/sys_exit_mmap")
                .then(|| "\tfield:int ret;\toffset:16;\tsize:4;\tsigned:1;".to_string())
        };
        assert!(matches!(offsets(&broken), Err(FormatError::Field { .. })));
        let gappy = ENTER_MMAP.replace("offset:32;", "offset:36;");
        let read_gappy = |tp: &str| (tp == "syscalls/sys_enter_mmap").then(|| gappy.clone());
        assert!(matches!(
            offsets(&read_gappy),
            Err(FormatError::Layout { .. })
        ));
    }

    /// This kernel's `oom:mark_victim` (Linux 6.18), and one whose fields moved.
    #[test]
    fn oom_victim_offsets() {
        let victim = "\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;";
        let read = |tp: &str| (tp == "oom/mark_victim").then(|| victim.to_string());
        let o = offsets(&read).unwrap();
        assert_eq!((o.oom_pid, o.oom_anon_rss), (8, 24));
        let moved = victim
            .replace("offset:24;", "offset:48;")
            .replace("offset:32;", "offset:56;")
            .replace("offset:40;", "offset:64;");
        let read_moved = |tp: &str| (tp == "oom/mark_victim").then(|| moved.clone());
        assert_eq!(offsets(&read_moved).unwrap().oom_anon_rss, 48);
        // The RSS fields out of order are refused, not misread.
        let gappy = victim.replace("offset:32;", "offset:36;");
        let read_gappy = |tp: &str| (tp == "oom/mark_victim").then(|| gappy.clone());
        assert!(matches!(
            offsets(&read_gappy),
            Err(FormatError::Layout { .. })
        ));
    }
}
