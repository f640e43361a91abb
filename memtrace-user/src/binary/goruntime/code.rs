//! Patterns in Go's machine code that probe placement looks for (decoded
//! with iced-x86): a function's frame setup and stack check, its RET
//! instructions, and the `exit_group` system call.

use iced_x86::{Code, Decoder, DecoderOptions, Register};

/// Offsets of the RET instructions in a function's code.
pub fn ret_offsets(code: &[u8], ip: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.code() == Code::Retnq {
            out.push(insn.ip() - ip);
        }
    }
    out
}

/// Whether `code` loads `SYS_exit_group` (231) into EAX and makes a
/// system call: `runtime.exit`'s body, not its ABI wrapper.
pub fn makes_exit_group(code: &[u8]) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut loaded = false;
    while decoder.can_decode() {
        let insn = decoder.decode();
        match insn.code() {
            Code::Mov_r32_imm32 | Code::Mov_rm32_imm32 if insn.op0_register() == Register::EAX => {
                loaded = insn.immediate32() == 231;
            }
            Code::Syscall if loaded => return true,
            _ => {}
        }
    }
    false
}

/// A function's first instructions (at most eight, where Go puts its stack
/// check and frame setup), up to the first that does not decode.
fn prologue(code: &[u8], ip: u64) -> impl Iterator<Item = iced_x86::Instruction> + '_ {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    std::iter::from_fn(move || decoder.can_decode().then(|| decoder.decode()))
        .take_while(|insn| !insn.is_invalid())
        .take(8)
}

/// Offset, from the function start, of the `PUSHQ BP` of Go ≥ 1.21's frame
/// setup (`PUSHQ BP; MOVQ SP, BP`, after the stack check). The kernel
/// emulates a push at a uprobe rather than single-stepping it, so a probe
/// there traps once instead of twice; it fires once per call, as the
/// re-entry after `morestack` runs the stack check again first. `None` for
/// other layouts.
pub fn frame_push(code: &[u8], ip: u64) -> Option<u64> {
    let mut push: Option<u64> = None;
    for insn in prologue(code, ip) {
        let is_mov_bp_sp = matches!(insn.code(), Code::Mov_rm64_r64 | Code::Mov_r64_rm64)
            && insn.op0_register() == Register::RBP
            && insn.op1_register() == Register::RSP;
        if let (Some(at), true) = (push, is_mov_bp_sp) {
            return Some(at - ip);
        }
        push = (insn.code() == Code::Push_r64 && insn.op0_register() == Register::RBP)
            .then_some(insn.ip());
    }
    None
}

/// Go's stack check at a function's start: `CMPQ SP, 16(R14)` (or, for a
/// larger frame, `LEAQ -n(SP), R12; CMPQ R12, 16(R14)`: `g.stackguard0`)
/// and then `JBE` to the `morestack` call. Returns the offset of the
/// `JBE` from the function start and its target.
pub fn stack_check_jump(code: &[u8], ip: u64) -> Option<(u64, u64)> {
    let mut compared = false;
    let mut sp_in = Register::RSP;
    for insn in prologue(code, ip).take(3) {
        match insn.code() {
            Code::Lea_r64_m if insn.memory_base() == Register::RSP => {
                sp_in = insn.op0_register();
            }
            Code::Cmp_r64_rm64 => {
                compared = insn.op0_register() == sp_in
                    && insn.memory_base() == Register::R14
                    && insn.memory_displacement64() == 16;
            }
            Code::Jbe_rel8_64 | Code::Jbe_rel32_64 if compared => {
                return Some((insn.ip() - ip, insn.near_branch_target()));
            }
            _ => return None,
        }
    }
    None
}

/// Offset, from the function start, of the first instruction after Go's
/// frame setup: `PUSHQ BP; MOVQ SP, BP` (Go ≥ 1.21), or `SUBQ $n, SP;
/// MOVQ BP, n-8(SP); LEAQ n-8(SP), BP` (older). A probe there sees the caller
/// in the frame-pointer chain and fires once even when `morestack` restarts
/// the function (that re-runs the stack check, which comes before).
pub fn after_frame_setup(code: &[u8], ip: u64) -> Option<u64> {
    // The instruction before: `push rbp`, or the displacement of `mov [rsp+d], rbp`.
    let mut saved_bp: Option<Option<u64>> = None;
    for insn in prologue(code, ip) {
        let done = match insn.code() {
            Code::Mov_rm64_r64 | Code::Mov_r64_rm64 => {
                saved_bp == Some(None)
                    && insn.op0_register() == Register::RBP
                    && insn.op1_register() == Register::RSP
            }
            Code::Lea_r64_m => {
                insn.op0_register() == Register::RBP
                    && insn.memory_base() == Register::RSP
                    && saved_bp == Some(Some(insn.memory_displacement64()))
            }
            _ => false,
        };
        if done {
            return Some(insn.next_ip() - ip);
        }
        saved_bp = match insn.code() {
            Code::Push_r64 if insn.op0_register() == Register::RBP => Some(None),
            Code::Mov_rm64_r64
                if insn.op0_register() == Register::None
                    && insn.memory_base() == Register::RSP
                    && insn.op1_register() == Register::RBP =>
            {
                Some(Some(insn.memory_displacement64()))
            }
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_go_frame_setup() {
        // cmp 0x10(%r14),%rsp; jbe rel32; push %rbp; mov %rsp,%rbp; sub $0x20,%rsp
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x96, 0x01, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5,
            0x48, 0x83, 0xec, 0x20,
        ];
        assert_eq!(after_frame_setup(&code, 0x4785e0), Some(14));
        assert_eq!(
            frame_push(&code, 0x4785e0),
            Some(10),
            "the push, after the stack check"
        );
        // A push of BP not followed by the frame setup is not it.
        let mut other = code;
        other[13] = 0xe6; // mov %rsp,%rsi
        assert_eq!(frame_push(&other, 0x4785e0), None);
    }

    #[test]
    fn finds_the_stack_check_jump() {
        // cmp 0x10(%r14),%rsp; jbe +0x8be; sub $0x70,%rsp (Go 1.19 mallocgc)
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xbe, 0x08, 0x00, 0x00, 0x48, 0x83, 0xec, 0x70,
        ];
        assert_eq!(
            stack_check_jump(&code, 0x40bd80),
            Some((4, 0x40bd8a + 0x8be))
        );
        // lea -0x98(%rsp),%r12; cmp 0x10(%r14),%r12; jbe
        let large = [
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x00, 0x01, 0x00, 0x00,
        ];
        assert_eq!(stack_check_jump(&large, 0x1000), Some((12, 0x1012 + 0x100)));
        // A compare with another field of g (not stackguard0) is not it.
        let mut other = code;
        other[3] = 0x18;
        assert_eq!(stack_check_jump(&other, 0x40bd80), None);
        // Nor is a JBE after anything else, or a function without a check.
        assert_eq!(stack_check_jump(&code[4..], 0x40bd84), None);
        assert_eq!(stack_check_jump(&[0x55, 0x48, 0x89, 0xe5], 0), None);
    }

    #[test]
    fn large_frame_prologue() {
        // lea -0x98(%rsp),%r12; cmp 0x10(%r14),%r12; jbe; push %rbp; mov %rsp,%rbp
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x00, 0x01, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5, 0x90,
        ];
        assert_eq!(after_frame_setup(&code, 0x1000), Some(22));
    }

    #[test]
    fn go_1_19_frame_setup() {
        // cmp 0x10(%r14),%rsp; jbe; sub $0x70,%rsp; mov %rbp,0x68(%rsp); lea 0x68(%rsp),%rbp
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xbe, 0x08, 0x00, 0x00, 0x48, 0x83, 0xec, 0x70,
            0x48, 0x89, 0x6c, 0x24, 0x68, 0x48, 0x8d, 0x6c, 0x24, 0x68, 0x83,
        ];
        assert_eq!(after_frame_setup(&code, 0x40bd80), Some(24));
        assert_eq!(frame_push(&code, 0x40bd80), None, "no push in this layout");
        // A lea of another slot is not the frame setup.
        let mut other = code;
        other[23] = 0x60;
        assert_eq!(after_frame_setup(&other, 0x40bd80), None);
    }

    #[test]
    fn finds_ret_instructions() {
        // push %rbp; mov %rsp,%rbp; pop %rbp; ret; int3
        let code = [0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3, 0xcc];
        assert_eq!(ret_offsets(&code, 0x1000), vec![5]);
        assert!(ret_offsets(&[0x90, 0x90], 0).is_empty());
    }

    #[test]
    fn finds_the_exit_group_body() {
        // mov 0x8(%rsp),%edi; mov $0xe7,%eax; syscall; ret
        let body = [
            0x8b, 0x7c, 0x24, 0x08, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xc3,
        ];
        assert!(makes_exit_group(&body));
        // mov $0x3c,%eax (exit, one thread); syscall
        let thread_exit = [0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xc3];
        assert!(!makes_exit_group(&thread_exit));
        assert!(!makes_exit_group(&[0x0f, 0x05]));
    }

    #[test]
    fn no_frame_setup() {
        // ret; and a push that is not followed by the frame move.
        assert_eq!(after_frame_setup(&[0xc3], 0), None);
        assert_eq!(after_frame_setup(&[0x55, 0x90, 0x48, 0x89, 0xe5], 0), None);
    }
}
