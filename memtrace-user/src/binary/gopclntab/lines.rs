//! Source positions from `.gopclntab`: the pc-value tables (file, line,
//! inline tree index) of each function and the inline trees, walked as
//! `runtime.CallersFrames` walks them.

use super::{
    cstr, name_for_print, u32_at, uvarint, GoTable, SrcFrame, FUNCDATA_INL_TREE,
    PCDATA_INL_TREE_INDEX,
};

/// Decodes a pc-value table (as `runtime.pcvalue` does): pairs of a
/// zig-zag value delta and a pc delta, starting at value -1 at `entry`.
/// Returns the value in effect at `target`. A step that does not move the
/// pc is allowed only [`MAX_STILL_STEPS`] times, so a forged table ends in
/// as many steps as `target` is far from `entry`, not as the file is long.
pub fn pcvalue(table: &[u8], start: usize, entry: u64, min_lc: u64, target: u64) -> Option<i64> {
    let mut pos = start;
    let (mut val, mut pc) = (-1i64, entry);
    let mut first = true;
    let mut still = 0;
    loop {
        let uv = uvarint(table, &mut pos)?;
        if uv == 0 && !first {
            return None;
        }
        first = false;
        let delta = if uv & 1 != 0 {
            !((uv >> 1) as i64)
        } else {
            (uv >> 1) as i64
        };
        val = val.wrapping_add(delta);
        let step = uvarint(table, &mut pos)?.checked_mul(min_lc)?;
        if step == 0 {
            still += 1;
            (still <= MAX_STILL_STEPS).then_some(())?;
        }
        pc = pc.checked_add(step)?;
        if target < pc {
            return Some(val);
        }
    }
}

/// Steps of a pc-value table that leave the pc where it was: Go's linker
/// writes none after the first, a forged table could write millions.
const MAX_STILL_STEPS: u32 = 16;

impl GoTable {
    /// Names at `pc`, outermost first: the function containing it, then each
    /// function inlined into it at that pc, down to the innermost.
    pub fn frames(&self, pc: u64) -> Option<Vec<String>> {
        Some(self.locate(pc)?.into_iter().map(|f| f.function).collect())
    }

    /// The source frames at `pc`, outermost first: the function containing
    /// it at the line of the call into the first inlined function, then each
    /// inlined function at its line, the innermost at `pc`'s own line
    /// (`runtime.CallersFrames` does the same walk).
    pub fn locate(&self, pc: u64) -> Option<Vec<SrcFrame>> {
        let i = self.index_of(pc)?;
        let f = self.function_at(i)?;
        let func = self.pclntable.checked_add(self.ftab(i)?.1 as usize)?;
        let tree = self.inline_tree(func);
        let mut out = Vec::new();
        let mut at = pc;
        // Each step moves to the call site in the parent; bound the walk.
        for _ in 0..64 {
            let (file, line) = self.position(func, f.entry, at);
            let call = tree.and_then(|(pcdata, tree)| {
                let idx = pcvalue(&self.data, self.pctab + pcdata, f.entry, self.min_lc, at)?;
                usize::try_from(idx)
                    .ok()?
                    .checked_mul(self.inline_size())?
                    .checked_add(tree)
            });
            let Some(call) = call else {
                out.push(SrcFrame {
                    function: name_for_print(f.name).into_owned(),
                    file,
                    line,
                    start_line: self.start_line(func),
                    inlined: false,
                });
                break;
            };
            let (name_at, parent_at, start_at) = if self.go118 {
                (12, 16, None)
            } else {
                (4, 8, Some(12))
            };
            let d = &self.data;
            let field = |o: usize| u32_at(d, call.checked_add(o)?);
            out.push(SrcFrame {
                function: name_for_print(self.name(field(name_at)?)?).into_owned(),
                file,
                line,
                start_line: start_at.and_then(field).unwrap_or(0),
                inlined: true,
            });
            let parent_pc = field(parent_at)? as i32;
            at = f.entry.checked_add_signed(i64::from(parent_pc))?;
        }
        out.reverse();
        Some(out)
    }

    fn func_header(&self) -> usize {
        if self.go118 {
            40
        } else {
            44
        }
    }

    fn inline_size(&self) -> usize {
        if self.go118 {
            20
        } else {
            16
        }
    }

    /// The inline tree of the `_func` at file offset `func`: the offset of
    /// its index table in pctab and the tree's file offset.
    fn inline_tree(&self, func: usize) -> Option<(usize, usize)> {
        let d = &self.data;
        let gofunc = self.gofunc?;
        let header = self.func_header();
        let npcdata = u32_at(d, func.checked_add(28)?)? as usize;
        let nfuncdata = usize::from(*d.get(func.checked_add(header - 1)?)?);
        if npcdata <= PCDATA_INL_TREE_INDEX || nfuncdata <= FUNCDATA_INL_TREE {
            return None;
        }
        let body = func.checked_add(header)?;
        let pcdata = u32_at(d, body.checked_add(4 * PCDATA_INL_TREE_INDEX)?)? as usize;
        let fdata_at = (4 * npcdata + 4 * FUNCDATA_INL_TREE).checked_add(body)?;
        let fdata = u32_at(d, fdata_at)?;
        if pcdata == 0 || fdata == u32::MAX {
            return None;
        }
        Some((pcdata, gofunc.checked_add(fdata as usize)?))
    }

    /// `_func.startLine` (Go 1.20+; 0 before).
    fn start_line(&self, func: usize) -> u32 {
        if self.go118 {
            return 0;
        }
        func.checked_add(36)
            .and_then(|at| u32_at(&self.data, at))
            .unwrap_or(0)
    }

    /// The file and line at `pc` of the `_func` at `func` (pcfile and pcln
    /// tables); `("", 0)` where the tables say nothing.
    fn position(&self, func: usize, entry: u64, pc: u64) -> (String, u32) {
        let d = &self.data;
        let table = |field: usize| -> Option<i64> {
            let off = u32_at(d, func.checked_add(field)?)? as usize;
            (off != 0).then_some(())?;
            pcvalue(d, self.pctab.checked_add(off)?, entry, self.min_lc, pc)
        };
        let file = table(20)
            .and_then(|fileno| u32::try_from(fileno).ok())
            .and_then(|fileno| {
                let cu = u32_at(d, func.checked_add(32)?)?;
                let at = (cu as usize + fileno as usize)
                    .checked_mul(4)?
                    .checked_add(self.cutab)?;
                let off = u32_at(d, at)?;
                (off != u32::MAX).then_some(())?;
                cstr(d, self.filetab + off as usize).map(str::to_string)
            })
            .unwrap_or_default();
        let line = table(24).and_then(|l| u32::try_from(l).ok()).unwrap_or(0);
        (file, line)
    }
}
