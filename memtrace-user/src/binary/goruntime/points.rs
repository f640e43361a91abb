//! Where to put each uprobe in a binary: after a function's frame setup
//! (so the caller is in the frame-pointer chain and a `morestack` restart
//! does not fire it twice), on its RET instructions (never a uretprobe),
//! or at the entry of a frameless assembly function; found by decoding the
//! machine code with iced-x86.

use iced_x86::{Code, Decoder, DecoderOptions};
use memtrace_common::HoldPoint;
use object::ObjectSymbol as _;

pub use super::code::{
    after_frame_setup, frame_push, makes_exit_group, ret_offsets, stack_check_jump,
};
use super::DataSymbols;
use crate::binary::gopclntab::{Function, GoTable};
use crate::model::error::TargetError;

const MALLOCGC: &str = "runtime.mallocgc";
/// `len(runtime.mallocNoScanTable)` in Go 1.27, for stripped binaries.
const GO127_NOSCAN_TABLE_LEN: u64 = 81;

/// Where to put one uprobe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub symbol: String,
    /// Virtual address of the attach instruction (after the prologue).
    pub vaddr: u64,
    /// Offset of that instruction in the file, as the kernel wants it.
    pub file_offset: u64,
    /// The BPF attach cookie: for allocators the size floor (smaller sizes
    /// are counted elsewhere), for holds the [`memtrace_common::HoldPoint`].
    pub cookie: u64,
}

/// Go's allocation entry points in this binary: `runtime.mallocgc` and, from
/// Go 1.27 on, the size-specialized `runtime.mallocgc{Tiny,SmallNoScan,
/// SmallScanNoHeader}SC<n>` that the compiler calls directly.
pub fn is_specialized_allocator(name: &str) -> bool {
    [
        "runtime.mallocgcTinySC",
        "runtime.mallocgcSmallNoScanSC",
        "runtime.mallocgcSmallScanNoHeaderSC",
    ]
    .iter()
    .any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Probe placement in one binary, from its function table.
pub(crate) struct Binary<'a> {
    pub path: &'a std::path::Path,
    pub table: &'a GoTable,
}

impl Binary<'_> {
    fn function(&self, name: &str) -> Result<Function<'_>, TargetError> {
        self.table
            .function(name)
            .ok_or_else(|| TargetError::MissingSymbol {
                path: self.path.to_owned(),
                symbol: name.to_string(),
            })
    }

    pub(crate) fn alloc_points(
        &self,
        syms: &DataSymbols<'_, '_>,
    ) -> Result<Vec<ProbePoint>, TargetError> {
        let mallocgc = self.function(MALLOCGC)?;
        let specialized: Vec<Function<'_>> = self
            .table
            .functions()
            .filter(|f| is_specialized_allocator(f.name))
            .collect();
        // mallocgc forwards sizes below len(mallocNoScanTable) to the
        // specialized functions (Go ≥ 1.27); those are counted by their own
        // probes. Stripped binaries lack the table's symbol: use 1.27's size.
        let floor = match syms.get("runtime.mallocNoScanTable") {
            // A forged size must not reach the cookie's flag bits.
            Some(t) => (t.size() / 8).min(1 << 16),
            None if !specialized.is_empty() => GO127_NOSCAN_TABLE_LEN,
            None => 0,
        };
        std::iter::once((mallocgc, floor))
            .chain(specialized.into_iter().map(|f| (f, 0)))
            .map(|(f, size_floor)| {
                let mut p = self.once_per_call(&f)?;
                if p.cookie & memtrace_common::AT_STACK_CHECK != 0 {
                    // The allocator's stack is read as at the push.
                    p.cookie |= memtrace_common::AT_PUSH;
                }
                p.cookie |= size_floor;
                Ok(p)
            })
            .collect()
    }

    fn code(&self, f: &Function<'_>) -> Result<&[u8], TargetError> {
        self.table.code(f).ok_or_else(|| self.prologue_error(f))
    }

    fn prologue_error(&self, f: &Function<'_>) -> TargetError {
        TargetError::Prologue {
            path: self.path.to_owned(),
            symbol: f.name.to_string(),
        }
    }

    fn point(
        &self,
        f: &Function<'_>,
        vaddr: u64,
        symbol: String,
    ) -> Result<ProbePoint, TargetError> {
        Ok(ProbePoint {
            file_offset: self
                .table
                .file_offset(vaddr)
                .ok_or_else(|| self.prologue_error(f))?,
            vaddr,
            symbol,
            cookie: 0,
        })
    }

    /// A point that fires once per call of `f` on an instruction the kernel
    /// emulates, so a hit traps once instead of twice (a single-stepped
    /// instruction costs a second trap, ~10 µs here): `f`'s `PUSHQ BP`
    /// (cookie [`memtrace_common::AT_PUSH`]), else its stack check's `JBE`
    /// (cookie [`memtrace_common::AT_STACK_CHECK`]: the program skips the
    /// entry that goes to `morestack`), else after its frame setup.
    fn once_per_call(&self, f: &Function<'_>) -> Result<ProbePoint, TargetError> {
        if let Some(mut p) = self.at_frame_push(f)? {
            p.cookie = memtrace_common::AT_PUSH;
            return Ok(p);
        }
        if let Some(mut p) = self.at_stack_check(f)? {
            p.cookie = memtrace_common::AT_STACK_CHECK;
            return Ok(p);
        }
        self.after_prologue(f)
    }

    /// A probe point on `f`'s `PUSHQ BP`, when its frame setup is Go
    /// ≥ 1.21's `PUSHQ BP; MOVQ SP, BP` (see [`frame_push`]).
    fn at_frame_push(&self, f: &Function<'_>) -> Result<Option<ProbePoint>, TargetError> {
        let code = self.code(f)?;
        frame_push(&code[..code.len().min(64)], f.entry)
            .map(|off| self.point(f, f.entry + off, f.name.to_string()))
            .transpose()
    }

    /// A probe point on the `JBE` of `f`'s stack check, when that jump
    /// leads to a call of `runtime.morestack_noctxt` (see
    /// [`stack_check_jump`]).
    fn at_stack_check(&self, f: &Function<'_>) -> Result<Option<ProbePoint>, TargetError> {
        let code = self.code(f)?;
        let Some((off, target)) = stack_check_jump(&code[..code.len().min(64)], f.entry) else {
            return Ok(None);
        };
        let Some(morestack) = self.table.function("runtime.morestack_noctxt") else {
            return Ok(None);
        };
        // The jump's target spills the arguments and calls morestack.
        let calls_morestack = target
            .checked_sub(f.entry)
            .and_then(|t| code.get(t as usize..))
            .is_some_and(|tail| {
                let mut d = Decoder::with_ip(64, tail, target, DecoderOptions::NONE);
                (0..24)
                    .map_while(|_| d.can_decode().then(|| d.decode()))
                    .any(|i| {
                        i.code() == Code::Call_rel32_64 && i.near_branch_target() == morestack.entry
                    })
            });
        if !calls_morestack {
            return Ok(None);
        }
        self.point(f, f.entry + off, f.name.to_string()).map(Some)
    }

    /// A probe point right after `f`'s frame setup.
    fn after_prologue(&self, f: &Function<'_>) -> Result<ProbePoint, TargetError> {
        let code = self.code(f)?;
        let skip = after_frame_setup(&code[..code.len().min(64)], f.entry)
            .ok_or_else(|| self.prologue_error(f))?;
        self.point(f, f.entry + skip, f.name.to_string())
    }

    /// Probe points on every RET instruction of `f` (to read a return value
    /// without a uretprobe, which Go's moving stacks do not survive).
    fn ret_points(&self, f: &Function<'_>) -> Result<Vec<ProbePoint>, TargetError> {
        let points = ret_offsets(self.code(f)?, f.entry)
            .into_iter()
            .map(|off| self.point(f, f.entry + off, format!("{} (ret)", f.name)))
            .collect::<Result<Vec<_>, _>>()?;
        if points.is_empty() {
            return Err(self.prologue_error(f));
        }
        Ok(points)
    }

    /// The GC view's probes; the heap figures' addresses need
    /// `runtime.gcController` and its layout.
    pub(crate) fn gc_points(
        &self,
        controller: Option<u64>,
        fields: Option<crate::binary::gtypes::GcFields>,
    ) -> Result<GcPoints, TargetError> {
        // Hundreds of cycles a second on a GC-heavy program: each probe on
        // an emulated instruction (they read globals, not the frame).
        let at = |name: &str| self.once_per_call(&self.function(name)?);
        let field =
            |pick: fn(&crate::binary::gtypes::GcFields) -> u64| Some(controller? + pick(&fields?));
        Ok(GcPoints {
            mark_termination: at("runtime.gcMarkTermination")?,
            stw_stop: at("runtime.stopTheWorldWithSema")?,
            stw_start: at("runtime.startTheWorldWithSema")?,
            heap_live: field(|f| f.heap_live),
            heap_goal: field(|f| f.heap_goal),
            heap_marked: field(|f| f.heap_marked),
        })
    }

    /// The hold points: after `runtime.gcenable`'s prologue (start), at
    /// the entry of `runtime.exit`'s assembly body (the one that makes the
    /// `exit_group` system call; `NOSPLIT` without a frame, so its entry is
    /// reached once), and after `runtime.dieFromSignal`'s prologue.
    pub(crate) fn hold_points(&self) -> Result<HoldPoints, TargetError> {
        let with = |mut p: ProbePoint, point: HoldPoint| {
            p.cookie = point as u64;
            p
        };
        let start = with(
            self.after_prologue(&self.function("runtime.gcenable")?)?,
            HoldPoint::Start,
        );
        let exit_body = self
            .table
            .functions()
            .filter(|f| f.name == "runtime.exit")
            .find(|f| self.table.code(f).is_some_and(makes_exit_group))
            .ok_or_else(|| TargetError::MissingSymbol {
                path: self.path.to_owned(),
                symbol: "runtime.exit (exit_group)".into(),
            })?;
        let exit = with(
            self.point(&exit_body, exit_body.entry, "runtime.exit".into())?,
            HoldPoint::Exit,
        );
        let signal = self
            .function("runtime.dieFromSignal")
            .and_then(|f| self.after_prologue(&f))
            .ok()
            .map(|p| with(p, HoldPoint::Signal));
        Ok(HoldPoints {
            start,
            exit,
            signal,
        })
    }

    pub(crate) fn goroutine_points(&self) -> Result<GoroutinePoints, TargetError> {
        let newproc1 = self.function("runtime.newproc1")?;
        Ok(GoroutinePoints {
            newproc: self.after_prologue(&newproc1)?,
            newproc_rets: self.ret_points(&newproc1)?,
            goexit: {
                // Only the `*g` argument is read: the push is as good a
                // place as any after the stack check, and traps once.
                let goexit0 = self.function("runtime.goexit0")?;
                match self.at_frame_push(&goexit0)? {
                    Some(p) => p,
                    None => self.after_prologue(&goexit0)?,
                }
            },
            spawned: None,
        })
    }

    /// The instruction after `caller`'s first direct call to `callee`.
    pub(crate) fn after_call(&self, caller: &str, callee: &str) -> Option<ProbePoint> {
        let call = self.first_call(caller, callee)?;
        let f = self.table.function(caller)?;
        self.point(&f, call.next_ip(), format!("{caller} (after {callee})"))
            .ok()
    }

    /// `caller`'s first direct call to `callee`, the call instruction
    /// itself: the kernel emulates a call at a uprobe (one trap), where
    /// most instructions are single-stepped out of line (two).
    pub(crate) fn at_call(&self, caller: &str, callee: &str) -> Option<ProbePoint> {
        let call = self.first_call(caller, callee)?;
        let f = self.table.function(caller)?;
        self.point(&f, call.ip(), format!("{caller} (call to {callee})"))
            .ok()
    }

    fn first_call(&self, caller: &str, callee: &str) -> Option<iced_x86::Instruction> {
        let f = self.table.function(caller)?;
        let target = self.table.function(callee)?.entry;
        let code = self.table.code(&f)?;
        let mut decoder = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
        while decoder.can_decode() {
            let insn = decoder.decode();
            if insn.code() == Code::Call_rel32_64 && insn.near_branch_target() == target {
                return Some(insn);
            }
        }
        None
    }
}

/// Where a target holds itself for user space.
#[derive(Clone, Debug)]
pub struct HoldPoints {
    pub start: ProbePoint,
    pub exit: ProbePoint,
    /// Absent in runtimes without `runtime.dieFromSignal`.
    pub signal: Option<ProbePoint>,
}

impl HoldPoints {
    pub fn points(&self) -> impl Iterator<Item = &ProbePoint> {
        [Some(&self.start), Some(&self.exit), self.signal.as_ref()]
            .into_iter()
            .flatten()
    }
}

/// Where the goroutines lens probes: after `runtime.newproc1`'s prologue and
/// on its RETs, and after `runtime.goexit0`'s prologue.
#[derive(Clone, Debug)]
pub struct GoroutinePoints {
    pub newproc: ProbePoint,
    pub newproc_rets: Vec<ProbePoint>,
    pub goexit: ProbePoint,
    /// After `runtime.newproc.func1`'s call to `newproc1`, its cookie the
    /// offsets of `startpc` and `gopc` in `runtime.g`
    /// ([`memtrace_common::SpawnCookie`]): creation in one probe instead of
    /// `newproc` and `newproc_rets`. Needs the `g` layout from DWARF.
    pub spawned: Option<ProbePoint>,
}

/// Where the GC view probes, and the link-time addresses of the heap size
/// and goal in `runtime.gcController` (from DWARF).
#[derive(Clone, Debug)]
pub struct GcPoints {
    pub mark_termination: ProbePoint,
    pub stw_stop: ProbePoint,
    pub stw_start: ProbePoint,
    pub heap_live: Option<u64>,
    pub heap_goal: Option<u64>,
    /// `gcController.heapMarked`: the bytes the last cycle marked live.
    pub heap_marked: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specialized_allocator_names() {
        assert!(is_specialized_allocator("runtime.mallocgcTinySC2"));
        assert!(is_specialized_allocator("runtime.mallocgcSmallNoScanSC17"));
        assert!(is_specialized_allocator(
            "runtime.mallocgcSmallScanNoHeaderSC1"
        ));
        assert!(!is_specialized_allocator(
            "runtime.mallocgcSmallNoScanSlowPath"
        ));
        assert!(!is_specialized_allocator("runtime.mallocgcSmallNoscan"));
        assert!(!is_specialized_allocator("runtime.mallocgcTinySC"));
        assert!(!is_specialized_allocator("main.mallocgcTinySC2"));
    }
}
