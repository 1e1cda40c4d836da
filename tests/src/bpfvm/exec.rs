//! The instruction loop: eBPF ISA v3 as LLVM emits it for BPF.
//!
//! ALU and ALU64 (including `sdiv`/`smod`, `movsx` and `bswap`), JMP and JMP32
//! (including `gotol`), `ld_imm64`, loads (also sign-extending), stores and
//! atomics. Division by zero gives 0 and modulo by zero leaves the dividend,
//! as the kernel defines them; shifts take their count modulo the width.
//! A bpf-to-bpf call gets a fresh stack and the caller's r6–r9 and r10 back
//! when it returns. The arithmetic itself is in `alu.rs`.

use std::collections::BTreeMap;

use super::{
    Location, MapBackend, Run, VmError,
    alu::{self, sign_extend},
    elf::{Insn, LD_IMM64, Program, Rel},
    helpers,
    mem::{Fault, Memory},
};

/// How many instructions a run may execute before [`VmError::InsnLimit`]
/// (the kernel's verifier bounds every loop; this only stops a runaway).
pub const DEFAULT_INSN_LIMIT: u64 = 10_000_000;
/// Call frames the kernel allows (`MAX_CALL_FRAMES`).
const MAX_FRAMES: usize = 8;

const LD: u8 = 0;
const LDX: u8 = 1;
const ST: u8 = 2;
const STX: u8 = 3;
const ALU: u8 = 4;
const JMP: u8 = 5;
const JMP32: u8 = 6;
const ALU64: u8 = 7;

/// What a caller left to restore when its callee exits.
struct Frame {
    ret: usize,
    saved: [u64; 4],
    fp: u64,
}

enum Flow {
    Next,
    Jump(i64),
    Exit(u64),
}

/// The state of one run.
pub(crate) struct Vm<'p, 'b> {
    pub prog: &'p Program,
    pub mem: Memory<'p>,
    pub maps: &'b mut dyn MapBackend,
    pub regs: [u64; 11],
    pub helper_calls: BTreeMap<u32, u64>,
    pub insns: u64,
    frames: Vec<Frame>,
    /// Every executed instruction's absolute index, when tracing.
    trace: Option<Vec<usize>>,
}

/// Runs `prog` on one XDP frame, executing at most `limit` instructions.
/// [`Program::run_xdp`] is this with [`DEFAULT_INSN_LIMIT`].
pub fn run_xdp(
    prog: &Program,
    frame: &[u8],
    maps: &mut dyn MapBackend,
    limit: u64,
) -> Result<Run, VmError> {
    run(prog, frame, maps, limit).map(|(_, run)| run)
}

/// [`run_xdp`], also returning the whole 64-bit r0.
pub(crate) fn run(
    prog: &Program,
    frame: &[u8],
    maps: &mut dyn MapBackend,
    limit: u64,
) -> Result<(u64, Run), VmError> {
    run_with(prog, frame, maps, limit, None).map(|(r0, run, _)| (r0, run))
}

/// [`run_xdp`], also returning where each executed instruction is, in order.
pub fn trace_xdp(
    prog: &Program,
    frame: &[u8],
    maps: &mut dyn MapBackend,
    limit: u64,
) -> Result<(Run, Vec<Location>), VmError> {
    let (_, run, trace) = run_with(prog, frame, maps, limit, Some(Vec::new()))?;
    let trace = trace.unwrap_or_default();
    Ok((run, trace.into_iter().map(|pc| prog.location(pc)).collect()))
}

fn run_with(
    prog: &Program,
    frame: &[u8],
    maps: &mut dyn MapBackend,
    limit: u64,
    trace: Option<Vec<usize>>,
) -> Result<(u64, Run, Option<Vec<usize>>), VmError> {
    let mut vm = Vm {
        prog,
        mem: Memory::new(prog, frame),
        maps,
        regs: [0; 11],
        helper_calls: BTreeMap::new(),
        insns: 0,
        frames: Vec::new(),
        trace,
    };
    vm.regs[1] = vm.mem.ctx();
    let r0 = vm.run(limit)?;
    let run = Run {
        action: r0 as u32,
        insns: vm.insns,
        helper_calls: vm.helper_calls,
        packet: vm.mem.packet(),
    };
    Ok((r0, run, vm.trace))
}

impl Vm<'_, '_> {
    fn run(&mut self, limit: u64) -> Result<u64, VmError> {
        let mut pc = self.prog.entry;
        self.regs[10] = self.mem.stack(0);
        loop {
            let Some(&i) = self.prog.insns.get(pc) else {
                return Err(VmError::PcOutOfRange {
                    from: self.prog.location(pc),
                    target: pc as i64,
                });
            };
            self.insns += 1;
            if let Some(t) = &mut self.trace {
                t.push(pc);
            }
            if self.insns > limit {
                return Err(VmError::InsnLimit(limit));
            }
            let mut next = pc as i64 + 1;
            match i.code & 7 {
                ALU | ALU64 => self.alu(pc, i)?,
                JMP | JMP32 => match self.jmp(pc, i)? {
                    Flow::Next => {}
                    Flow::Jump(t) => next = t,
                    Flow::Exit(r0) => return Ok(r0),
                },
                LD => {
                    self.ld_imm64(pc, i)?;
                    next += 1;
                }
                LDX => self.ldx(pc, i)?,
                _ => self.store(pc, i)?,
            }
            if next < 0 || next as usize >= self.prog.insns.len() {
                return Err(VmError::PcOutOfRange {
                    from: self.prog.location(pc),
                    target: next,
                });
            }
            pc = next as usize;
        }
    }

    fn bad(&self, pc: usize, i: Insn) -> VmError {
        VmError::UnknownOpcode {
            at: self.prog.location(pc),
            opcode: i.code,
        }
    }

    /// A register to read.
    fn r(&self, pc: usize, reg: u8) -> Result<usize, VmError> {
        if reg > 10 {
            return Err(VmError::BadRegister {
                at: self.prog.location(pc),
                reg,
            });
        }
        Ok(reg as usize)
    }

    /// A register to write (not r10).
    fn w(&self, pc: usize, reg: u8) -> Result<usize, VmError> {
        if reg >= 10 {
            return Err(VmError::BadRegister {
                at: self.prog.location(pc),
                reg,
            });
        }
        Ok(reg as usize)
    }

    /// Turns a memory fault into an error located at `pc`.
    pub(crate) fn fault(
        &self,
        pc: usize,
        addr: u64,
        size: usize,
        write: bool,
        fault: Fault,
    ) -> VmError {
        VmError::Access {
            at: self.prog.location(pc),
            addr,
            size,
            write,
            fault,
        }
    }

    fn alu(&mut self, pc: usize, i: Insn) -> Result<(), VmError> {
        let d = self.w(pc, i.dst)?;
        let s = if i.code & 0x08 != 0 {
            self.regs[self.r(pc, i.src)?]
        } else {
            i.imm as i64 as u64
        };
        self.regs[d] = alu::alu(i, self.regs[d], s).ok_or_else(|| self.bad(pc, i))?;
        Ok(())
    }

    fn jmp(&mut self, pc: usize, i: Insn) -> Result<Flow, VmError> {
        let is32 = i.code & 7 == JMP32;
        let x = i.code & 0x08 != 0;
        let op = i.code & 0xf0;
        let target = |off: i64| Flow::Jump(pc as i64 + 1 + off);
        match op {
            0x00 if x => Err(self.bad(pc, i)),
            0x00 if is32 => Ok(target(i.imm as i64)),
            0x00 => Ok(target(i.off as i64)),
            0x80 if is32 || x => Err(self.bad(pc, i)),
            0x80 => self.call(pc, i),
            0x90 if is32 || x => Err(self.bad(pc, i)),
            0x90 => Ok(self.exit()),
            _ => {
                let a = self.regs[self.r(pc, i.dst)?];
                let b = if x {
                    self.regs[self.r(pc, i.src)?]
                } else {
                    i.imm as i64 as u64
                };
                let taken = alu::condition(i.code, a, b).ok_or_else(|| self.bad(pc, i))?;
                Ok(if taken {
                    target(i.off as i64)
                } else {
                    Flow::Next
                })
            }
        }
    }

    fn call(&mut self, pc: usize, i: Insn) -> Result<Flow, VmError> {
        match (i.src, i.rel) {
            (_, Rel::Call(t)) => {
                if self.frames.len() + 1 >= MAX_FRAMES {
                    return Err(VmError::CallDepth {
                        at: self.prog.location(pc),
                    });
                }
                self.frames.push(Frame {
                    ret: pc + 1,
                    saved: [self.regs[6], self.regs[7], self.regs[8], self.regs[9]],
                    fp: self.regs[10],
                });
                self.regs[10] = self.mem.stack(self.frames.len());
                Ok(Flow::Jump(t as i64))
            }
            (0, _) => {
                let id = i.imm as u32;
                *self.helper_calls.entry(id).or_default() += 1;
                self.regs[0] = helpers::call(self, pc, id)?;
                Ok(Flow::Next)
            }
            _ => Err(self.bad(pc, i)),
        }
    }

    fn exit(&mut self) -> Flow {
        match self.frames.pop() {
            None => Flow::Exit(self.regs[0]),
            Some(f) => {
                self.regs[6..10].copy_from_slice(&f.saved);
                self.regs[10] = f.fp;
                Flow::Jump(f.ret as i64)
            }
        }
    }

    fn ld_imm64(&mut self, pc: usize, i: Insn) -> Result<(), VmError> {
        let d = self.w(pc, i.dst)?;
        let hi = match self.prog.insns.get(pc + 1) {
            Some(n) if i.code == LD_IMM64 && n.code == 0 => n.imm,
            _ => return Err(self.bad(pc, i)),
        };
        self.regs[d] = match i.rel {
            Rel::Map(m) => self.mem.map_handle(m),
            Rel::Global { section, offset } => self.mem.global(section, offset),
            Rel::None if i.src == 0 => u64::from(i.imm as u32) | (u64::from(hi as u32) << 32),
            _ => return Err(self.bad(pc, i)),
        };
        Ok(())
    }

    fn size(i: Insn) -> usize {
        [4, 2, 1, 8][usize::from((i.code >> 3) & 3)]
    }

    fn ldx(&mut self, pc: usize, i: Insn) -> Result<(), VmError> {
        let (d, s, size) = (self.w(pc, i.dst)?, self.r(pc, i.src)?, Self::size(i));
        let addr = self.regs[s].wrapping_add(i.off as i64 as u64);
        let v = self
            .mem
            .load(addr, size)
            .map_err(|f| self.fault(pc, addr, size, false, f))?;
        self.regs[d] = match i.code & 0xe0 {
            0x60 => v,
            0x80 if size < 8 => sign_extend(v, size),
            _ => return Err(self.bad(pc, i)),
        };
        Ok(())
    }

    fn store(&mut self, pc: usize, i: Insn) -> Result<(), VmError> {
        let size = Self::size(i);
        let base = self.regs[self.r(pc, i.dst)?];
        let addr = base.wrapping_add(i.off as i64 as u64);
        let v = match (i.code & 7, i.code & 0xe0) {
            (ST, 0x60) => i.imm as i64 as u64,
            (STX, 0x60) => self.regs[self.r(pc, i.src)?],
            (STX, 0xc0) => return self.atomic(pc, i, addr, size),
            _ => return Err(self.bad(pc, i)),
        };
        self.mem
            .store(addr, size, v)
            .map_err(|f| self.fault(pc, addr, size, true, f))
    }

    fn atomic(&mut self, pc: usize, i: Insn, addr: u64, size: usize) -> Result<(), VmError> {
        let s = self.r(pc, i.src)?;
        let imm = i.imm as u32;
        // Load-acquire and store-release: plain moves here.
        if imm == 0x100 {
            let d = self.w(pc, i.dst)?;
            let from = self.regs[s].wrapping_add(i.off as i64 as u64);
            self.regs[d] = self
                .mem
                .load(from, size)
                .map_err(|f| self.fault(pc, from, size, false, f))?;
            return Ok(());
        }
        if imm == 0x110 {
            let v = self.regs[s];
            return self
                .mem
                .store(addr, size, v)
                .map_err(|f| self.fault(pc, addr, size, true, f));
        }
        if size < 4 {
            return Err(self.bad(pc, i));
        }
        let mask = if size == 8 { u64::MAX } else { 0xffff_ffff };
        let old = self
            .mem
            .load(addr, size)
            .map_err(|f| self.fault(pc, addr, size, true, f))?;
        let v = self.regs[s] & mask;
        let new = match imm {
            0x00 | 0x01 => old.wrapping_add(v),
            0x40 | 0x41 => old | v,
            0x50 | 0x51 => old & v,
            0xa0 | 0xa1 => old ^ v,
            0xe1 => v,
            0xf1 if self.regs[0] & mask == old => v,
            0xf1 => old,
            _ => return Err(self.bad(pc, i)),
        } & mask;
        self.mem
            .store(addr, size, new)
            .map_err(|f| self.fault(pc, addr, size, true, f))?;
        match imm {
            0xf1 => self.regs[0] = old,
            _ if imm & 1 == 1 => self.regs[s] = old,
            _ => {}
        }
        Ok(())
    }
}
