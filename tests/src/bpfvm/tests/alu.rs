//! ALU and jump edge cases, table-driven.

use super::*;
use crate::bpfvm::EmptyMaps;

#[test]
fn alu_edge_cases() {
    let m = || Asm::default();
    let cases: Vec<(&str, Asm, u64)> = vec![
        ("mov64 sign-extends imm", m().mov(0, -1), u64::MAX),
        ("mov32 zero-extends", m().alu32(MOV, 0, -1), 0xffff_ffff),
        ("add64 wraps", m().mov(0, -1).alu64(ADD, 0, 1), 0),
        (
            "add32 wraps, clears high",
            m().ld64(0, 0x1_ffff_ffff).alu32(ADD, 0, 2),
            1,
        ),
        ("sub64", m().mov(0, 3).alu64(SUB, 0, 5), (-2i64) as u64),
        (
            "mul64 by negative imm",
            m().mov(0, 3).alu64(MUL, 0, -2),
            (-6i64) as u64,
        ),
        ("mul32", m().ld64(0, 0x1_0000_0003).alu32(MUL, 0, 3), 9),
        ("div64", m().mov(0, 100).mov(1, 7).alu64r(DIV, 0, 1), 14),
        (
            "div64 by imm -1 is by u64::MAX",
            m().mov(0, 5).alu64(DIV, 0, -1),
            0,
        ),
        (
            "div64 by zero is 0",
            m().mov(0, 100).mov(1, 0).alu64r(DIV, 0, 1),
            0,
        ),
        (
            "mod64 by zero keeps dst",
            m().mov(0, 100).mov(1, 0).alu64r(MOD, 0, 1),
            100,
        ),
        ("div32 by zero is 0", m().mov(0, 100).alu32(DIV, 0, 0), 0),
        (
            "mod32 by zero keeps low dst",
            m().ld64(0, 0x7_0000_0064).alu32(MOD, 0, 0),
            100,
        ),
        ("mod64", m().mov(0, 100).alu64(MOD, 0, 7), 2),
        (
            "sdiv64",
            m().mov(0, -7).raw(0x37, 0, 0, 1, 2),
            (-3i64) as u64,
        ),
        (
            "smod64",
            m().mov(0, -7).raw(0x97, 0, 0, 1, 2),
            (-1i64) as u64,
        ),
        (
            "sdiv64 MIN / -1",
            m().ld64(0, 1 << 63).raw(0x37, 0, 0, 1, -1),
            1 << 63,
        ),
        ("smod64 by -1", m().mov(0, -7).raw(0x97, 0, 0, 1, -1), 0),
        ("sdiv64 by zero", m().mov(0, -7).raw(0x37, 0, 0, 1, 0), 0),
        (
            "smod64 by zero",
            m().mov(0, -7).raw(0x97, 0, 0, 1, 0),
            (-7i64) as u64,
        ),
        (
            "sdiv32",
            m().mov(0, -7).raw(0x34, 0, 0, 1, 2),
            (-3i32) as u32 as u64,
        ),
        (
            "smod32 by zero",
            m().mov(0, -7).raw(0x94, 0, 0, 1, 0),
            (-7i32) as u32 as u64,
        ),
        (
            "or/and/xor",
            m().mov(0, 0b1100)
                .alu64(OR, 0, 0b0011)
                .alu64(AND, 0, 0b0110)
                .alu64(XOR, 0, 1),
            0b0111,
        ),
        (
            "lsh64 count mod 64",
            m().mov(0, 1).mov(1, 65).alu64r(LSH, 0, 1),
            2,
        ),
        (
            "lsh32 drops high",
            m().mov(0, 1).alu32(LSH, 0, 31).alu32(LSH, 0, 1),
            0,
        ),
        (
            "lsh32 count mod 32",
            m().mov(0, 1).mov(1, 33).alu32r(LSH, 0, 1),
            2,
        ),
        ("rsh64 logical", m().mov(0, -1).alu64(RSH, 0, 60), 0xf),
        ("rsh32", m().mov(0, -1).alu32(RSH, 0, 28), 0xf),
        ("arsh64", m().mov(0, -16).alu64(ARSH, 0, 2), (-4i64) as u64),
        (
            "arsh32",
            m().alu32(MOV, 0, -16).alu32(ARSH, 0, 2),
            (-4i32) as u32 as u64,
        ),
        ("neg64", m().mov(0, 5).alu64(NEG, 0, 0), (-5i64) as u64),
        (
            "neg32",
            m().mov(0, 5).alu32(NEG, 0, 0),
            (-5i32) as u32 as u64,
        ),
        (
            "movsx64 8",
            m().mov(1, 0x80).raw(0xbf, 0, 1, 8, 0),
            (-128i64) as u64,
        ),
        (
            "movsx64 16",
            m().mov(1, 0x8000).raw(0xbf, 0, 1, 16, 0),
            (-32768i64) as u64,
        ),
        (
            "movsx64 32",
            m().ld64(1, 0x8000_0000).raw(0xbf, 0, 1, 32, 0),
            0xffff_ffff_8000_0000,
        ),
        (
            "movsx32 8",
            m().mov(1, 0xff).raw(0xbc, 0, 1, 8, 0),
            0xffff_ffff,
        ),
        (
            "le16 truncates",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xd4, 0, 0, 0, 16),
            0x7788,
        ),
        (
            "le32 truncates",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xd4, 0, 0, 0, 32),
            0x5566_7788,
        ),
        (
            "le64 keeps",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xd4, 0, 0, 0, 64),
            0x1122_3344_5566_7788,
        ),
        (
            "be16",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xdc, 0, 0, 0, 16),
            0x8877,
        ),
        (
            "be32",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xdc, 0, 0, 0, 32),
            0x8877_6655,
        ),
        (
            "be64",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xdc, 0, 0, 0, 64),
            0x8877_6655_4433_2211,
        ),
        (
            "bswap16 (ALU64)",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xd7, 0, 0, 0, 16),
            0x8877,
        ),
        (
            "bswap64 (ALU64)",
            m().ld64(0, 0x1122_3344_5566_7788).raw(0xd7, 0, 0, 0, 64),
            0x8877_6655_4433_2211,
        ),
        (
            "ld_imm64",
            m().ld64(0, 0xdead_beef_0bad_f00d),
            0xdead_beef_0bad_f00d,
        ),
    ];
    for (name, prog, want) in cases {
        assert_eq!(r0(prog), want, "{name}");
    }
}

/// `r0 = 1` if the jump is taken, else 0.
fn taken(setup: Asm, jump: impl FnOnce(Asm) -> Asm) -> bool {
    let a = jump(setup.mov(0, 0)).exit().mov(0, 1);
    r0(a) == 1
}

/// A name, a jump to add after the setup, and whether it is taken.
type JumpCase = (&'static str, fn(Asm) -> Asm, bool);

#[test]
fn jump_edge_cases() {
    let m = || Asm::default().mov(1, -1).mov(2, 1).ld64(3, 0x1_0000_0000);
    let cases: Vec<JumpCase> = vec![
        ("jeq imm", |a| a.jmp(JEQ, 2, 1, 1), true),
        ("jne imm", |a| a.jmp(JNE, 2, 1, 1), false),
        ("jeq sign-extended imm", |a| a.jmp(JEQ, 1, -1, 1), true),
        ("jgt unsigned: -1 > 1", |a| a.jmpr(JGT, 1, 2, 1), true),
        ("jsgt signed: -1 > 1", |a| a.jmpr(JSGT, 1, 2, 1), false),
        ("jge equal", |a| a.jmpr(JGE, 2, 2, 1), true),
        ("jsge", |a| a.jmpr(JSGE, 2, 1, 1), true),
        ("jlt unsigned", |a| a.jmpr(JLT, 2, 1, 1), true),
        ("jle", |a| a.jmpr(JLE, 1, 2, 1), false),
        ("jslt", |a| a.jmpr(JSLT, 1, 2, 1), true),
        ("jsle", |a| a.jmp(JSLE, 1, -1, 1), true),
        ("jset", |a| a.jmp(JSET, 3, 1, 1), false),
        ("jset high bit", |a| a.jmpr(JSET, 3, 3, 1), true),
        ("jeq64 sees high bits", |a| a.jmp(JEQ, 3, 0, 1), false),
        ("jeq32 ignores high bits", |a| a.jmp32(JEQ, 3, 0, 1), true),
        ("jsgt32 signed low word", |a| a.jmp32(JSGT, 1, 0, 1), false),
        ("jgt32 unsigned low word", |a| a.jmp32(JGT, 1, 0, 1), true),
        ("ja", |a| a.ja(1), true),
        ("gotol (JMP32 ja, imm)", |a| a.raw(0x06, 0, 0, 0, 1), true),
    ];
    for (name, jump, want) in cases {
        assert_eq!(taken(m(), jump), want, "{name}");
    }
    // A backward jump: count r0 down from 5; 2 + 5 * 2 + 1 instructions.
    let a = Asm::default()
        .mov(0, 5)
        .mov(1, 0)
        .alu64(SUB, 0, 1)
        .jmp(JNE, 0, 0, -2)
        .exit();
    let (v, run) = run_on(&a, &[0; 14], &mut EmptyMaps).unwrap();
    assert_eq!((v, run.insns), (0, 2 + 5 * 2 + 1));
}
