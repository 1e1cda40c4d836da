//! Hand-assembled programs, with a tiny assembler ([`Asm`]): ALU and jump
//! edge cases ([`alu`]), control flow and errors ([`flow`]), memory
//! ([`memory`]) and map helpers ([`maps`]).

use super::{
    EmptyMaps, MapBackend, Program, Run, VmError,
    elf::{MapDef, Rel},
    exec,
};

/// A tiny assembler: one method per instruction form, chained.
#[derive(Default, Clone)]
pub(super) struct Asm(pub Vec<u8>);

// Opcode classes and operations, named as in the ISA.
const ALU: u8 = 0x04;
const ALU64: u8 = 0x07;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const X: u8 = 0x08;
pub(super) const ADD: u8 = 0x00;
pub(super) const SUB: u8 = 0x10;
pub(super) const MUL: u8 = 0x20;
pub(super) const DIV: u8 = 0x30;
pub(super) const OR: u8 = 0x40;
pub(super) const AND: u8 = 0x50;
pub(super) const LSH: u8 = 0x60;
pub(super) const RSH: u8 = 0x70;
pub(super) const NEG: u8 = 0x80;
pub(super) const MOD: u8 = 0x90;
pub(super) const XOR: u8 = 0xa0;
pub(super) const MOV: u8 = 0xb0;
pub(super) const ARSH: u8 = 0xc0;
pub(super) const JEQ: u8 = 0x10;
pub(super) const JGT: u8 = 0x20;
pub(super) const JGE: u8 = 0x30;
pub(super) const JSET: u8 = 0x40;
pub(super) const JNE: u8 = 0x50;
pub(super) const JSGT: u8 = 0x60;
pub(super) const JSGE: u8 = 0x70;
pub(super) const JLT: u8 = 0xa0;
pub(super) const JLE: u8 = 0xb0;
pub(super) const JSLT: u8 = 0xc0;
pub(super) const JSLE: u8 = 0xd0;
/// Size bits of loads and stores.
pub(super) const W: u8 = 0x00;
pub(super) const H: u8 = 0x08;
pub(super) const B: u8 = 0x10;
pub(super) const DW: u8 = 0x18;

impl Asm {
    pub(super) fn raw(mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        self.0.push(code);
        self.0.push(dst | (src << 4));
        self.0.extend(off.to_le_bytes());
        self.0.extend(imm.to_le_bytes());
        self
    }
    pub(super) fn alu64(self, op: u8, dst: u8, imm: i32) -> Self {
        self.raw(ALU64 | op, dst, 0, 0, imm)
    }
    pub(super) fn alu64r(self, op: u8, dst: u8, src: u8) -> Self {
        self.raw(ALU64 | X | op, dst, src, 0, 0)
    }
    pub(super) fn alu32(self, op: u8, dst: u8, imm: i32) -> Self {
        self.raw(ALU | op, dst, 0, 0, imm)
    }
    pub(super) fn alu32r(self, op: u8, dst: u8, src: u8) -> Self {
        self.raw(ALU | X | op, dst, src, 0, 0)
    }
    pub(super) fn mov(self, dst: u8, imm: i32) -> Self {
        self.alu64(MOV, dst, imm)
    }
    pub(super) fn movr(self, dst: u8, src: u8) -> Self {
        self.alu64r(MOV, dst, src)
    }
    pub(super) fn ld64(self, dst: u8, v: u64) -> Self {
        self.raw(0x18, dst, 0, 0, v as u32 as i32)
            .raw(0, 0, 0, 0, (v >> 32) as u32 as i32)
    }
    pub(super) fn jmp(self, op: u8, dst: u8, imm: i32, off: i16) -> Self {
        self.raw(JMP | op, dst, 0, off, imm)
    }
    pub(super) fn jmpr(self, op: u8, dst: u8, src: u8, off: i16) -> Self {
        self.raw(JMP | X | op, dst, src, off, 0)
    }
    pub(super) fn jmp32(self, op: u8, dst: u8, imm: i32, off: i16) -> Self {
        self.raw(JMP32 | op, dst, 0, off, imm)
    }
    pub(super) fn ja(self, off: i16) -> Self {
        self.raw(JMP, 0, 0, off, 0)
    }
    pub(super) fn call(self, helper: i32) -> Self {
        self.raw(0x85, 0, 0, 0, helper)
    }
    pub(super) fn call_rel(self, imm: i32) -> Self {
        self.raw(0x85, 0, 1, 0, imm)
    }
    pub(super) fn exit(self) -> Self {
        self.raw(0x95, 0, 0, 0, 0)
    }
    pub(super) fn ldx(self, size: u8, dst: u8, src: u8, off: i16) -> Self {
        self.raw(0x61 | size, dst, src, off, 0)
    }
    pub(super) fn ldxsx(self, size: u8, dst: u8, src: u8, off: i16) -> Self {
        self.raw(0x81 | size, dst, src, off, 0)
    }
    pub(super) fn stx(self, size: u8, dst: u8, src: u8, off: i16) -> Self {
        self.raw(0x63 | size, dst, src, off, 0)
    }
    pub(super) fn st(self, size: u8, dst: u8, off: i16, imm: i32) -> Self {
        self.raw(0x62 | size, dst, 0, off, imm)
    }
    pub(super) fn atomic(self, size: u8, dst: u8, src: u8, off: i16, op: i32) -> Self {
        self.raw(0xc3 | size, dst, src, off, op)
    }
    pub(super) fn program(&self) -> Program {
        Program::from_raw(&self.0).expect("assemble")
    }
}

/// Runs `a` on `frame`; returns the whole r0 and the run.
pub(super) fn run_on(
    a: &Asm,
    frame: &[u8],
    maps: &mut dyn MapBackend,
) -> Result<(u64, Run), VmError> {
    exec::run(&a.program(), frame, maps, 100_000)
}

/// Runs `a` (with an exit appended) on a 14-byte frame; returns r0.
pub(super) fn r0(a: Asm) -> u64 {
    run_on(&a.exit(), &[0; 14], &mut EmptyMaps).expect("run").0
}

/// A program with one map: every `ld_imm64` loads it.
pub(super) fn with_map(a: &Asm, def: MapDef) -> Program {
    let mut p = a.program();
    p.maps.push(def);
    for i in p.insns.iter_mut().filter(|i| i.code == 0x18) {
        i.rel = Rel::Map(0);
    }
    p
}

pub(super) fn def(name: &str, map_type: u32, key_size: u32, value_size: u32, max: u32) -> MapDef {
    MapDef {
        name: name.into(),
        map_type,
        key_size,
        value_size,
        max_entries: max,
        flags: 0,
    }
}

mod alu;
mod flow;
mod maps;
mod memory;
