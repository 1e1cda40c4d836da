//! Arithmetic and jump conditions: pure functions of an instruction and its
//! operands, so the loop in [`super::exec`] only fetches and stores registers.

use super::elf::Insn;

/// `BPF_ALU64`: the class bits of a 64-bit ALU instruction.
const ALU64: u8 = 7;
/// `BPF_JMP32`: the class bits of a 32-bit comparison.
const JMP32: u8 = 6;

/// `v`'s low `bytes` bytes, sign-extended to 64 bits.
pub(crate) fn sign_extend(v: u64, bytes: usize) -> u64 {
    let shift = 64 - 8 * bytes as u32;
    (((v << shift) as i64) >> shift) as u64
}

/// The new value of dst for ALU or ALU64 instruction `i`, given dst's value
/// and the source operand (a register, or `imm` sign-extended to 64 bits);
/// `None` for an invalid encoding.
///
/// 32-bit operations zero the upper half. Division by zero gives 0 and modulo
/// by zero leaves the dividend (the kernel's definitions); `off = 1` makes
/// `div`/`mod` signed, and on `mov` from a register `off = 8/16/32` is
/// `movsx`. Shift counts are taken modulo the width.
pub(crate) fn alu(i: Insn, dv: u64, s: u64) -> Option<u64> {
    let x = i.code & 0x08 != 0;
    let op = i.code & 0xf0;
    if op == 0xd0 {
        // END: to_le (0xd4) is a truncation on a little-endian machine; to_be
        // (0xdc) and ALU64 bswap (0xd7) swap the bytes.
        if i.code == 0xdf {
            return None;
        }
        let swap = i.code & 0x0f != 0x04;
        return Some(match (i.imm, swap) {
            (16, false) => dv & 0xffff,
            (32, false) => dv & 0xffff_ffff,
            (64, false) => dv,
            (16, true) => u64::from((dv as u16).swap_bytes()),
            (32, true) => u64::from((dv as u32).swap_bytes()),
            (64, true) => dv.swap_bytes(),
            _ => return None,
        });
    }
    if i.code & 7 == ALU64 {
        return Some(match (op, i.off) {
            (0x00, 0) => dv.wrapping_add(s),
            (0x10, 0) => dv.wrapping_sub(s),
            (0x20, 0) => dv.wrapping_mul(s),
            (0x30, 0) => dv.checked_div(s).unwrap_or(0),
            (0x30, 1) if s == 0 => 0,
            (0x30, 1) => (dv as i64).wrapping_div(s as i64) as u64,
            (0x40, 0) => dv | s,
            (0x50, 0) => dv & s,
            (0x60, 0) => dv << (s & 63),
            (0x70, 0) => dv >> (s & 63),
            (0x80, 0) if !x => dv.wrapping_neg(),
            (0x90, 0) => dv.checked_rem(s).unwrap_or(dv),
            (0x90, 1) if s == 0 => dv,
            (0x90, 1) => (dv as i64).wrapping_rem(s as i64) as u64,
            (0xa0, 0) => dv ^ s,
            (0xb0, 0) => s,
            (0xb0, 8 | 16 | 32) if x => sign_extend(s, i.off as usize / 8),
            (0xc0, 0) => ((dv as i64) >> (s & 63)) as u64,
            _ => return None,
        });
    }
    let (dv, s) = (dv as u32, s as u32);
    Some(u64::from(match (op, i.off) {
        (0x00, 0) => dv.wrapping_add(s),
        (0x10, 0) => dv.wrapping_sub(s),
        (0x20, 0) => dv.wrapping_mul(s),
        (0x30, 0) => dv.checked_div(s).unwrap_or(0),
        (0x30, 1) if s == 0 => 0,
        (0x30, 1) => (dv as i32).wrapping_div(s as i32) as u32,
        (0x40, 0) => dv | s,
        (0x50, 0) => dv & s,
        (0x60, 0) => dv << (s & 31),
        (0x70, 0) => dv >> (s & 31),
        (0x80, 0) if !x => dv.wrapping_neg(),
        (0x90, 0) => dv.checked_rem(s).unwrap_or(dv),
        (0x90, 1) if s == 0 => dv,
        (0x90, 1) => (dv as i32).wrapping_rem(s as i32) as u32,
        (0xa0, 0) => dv ^ s,
        (0xb0, 0) => s,
        (0xb0, 8 | 16) if x => sign_extend(u64::from(s), i.off as usize / 8) as u32,
        (0xc0, 0) => ((dv as i32) >> (s & 31)) as u32,
        _ => return None,
    }))
}

/// Whether conditional jump `code` (JMP or JMP32 class) is taken for
/// operands `a` (dst) and `b` (src, or `imm` sign-extended); `None` if `code`
/// is not a conditional jump. JMP32 compares the low 32 bits.
pub(crate) fn condition(code: u8, a: u64, b: u64) -> Option<bool> {
    let (a, b, sa, sb) = if code & 7 == JMP32 {
        let (a, b) = (a as u32, b as u32);
        (
            u64::from(a),
            u64::from(b),
            i64::from(a as i32),
            i64::from(b as i32),
        )
    } else {
        (a, b, a as i64, b as i64)
    };
    Some(match code & 0xf0 {
        0x10 => a == b,
        0x20 => a > b,
        0x30 => a >= b,
        0x40 => a & b != 0,
        0x50 => a != b,
        0x60 => sa > sb,
        0x70 => sa >= sb,
        0xa0 => a < b,
        0xb0 => a <= b,
        0xc0 => sa < sb,
        0xd0 => sa <= sb,
        _ => return None,
    })
}
