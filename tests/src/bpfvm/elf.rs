//! Loading a BPF ELF object: instructions, relocations, maps and globals.
//!
//! Every executable section is loaded, one after the other, into one
//! instruction array, so a bpf-to-bpf call from `xdp` into `.text` (where
//! `memcpy` and friends live) is an ordinary jump to an absolute index. The
//! relocations are resolved once, at load:
//!
//! - `R_BPF_64_64` on an `ld_imm64` against a symbol in `maps` names a map
//!   (its `struct bpf_map_def` gives the layout; a map in `.maps` is named
//!   too, but its layout, which is in BTF, must be set by the caller);
//!   against `.rodata*`, `.data*` or `.bss*` it is the address of a global
//!   (the symbol's offset plus the addend the compiler left in `imm`);
//! - `R_BPF_64_32` on a `call` names the callee: instruction
//!   `symbol / 8 + imm + 1` of the symbol's section (`imm` is -1 for a call to
//!   a function symbol, the offset for a call through a section symbol);
//! - an unrelocated `call` with `src_reg = 1` is pc-relative.

use std::collections::HashMap;

use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex,
    SectionKind, SymbolKind,
    elf::{R_BPF_64_32, R_BPF_64_64, R_BPF_NONE},
    read::elf::ElfFile64,
};

use super::{Location, MapBackend, Run, VmError};

/// `BPF_LD | BPF_IMM | BPF_DW`: the first slot of a 16-byte `ld_imm64`.
pub(crate) const LD_IMM64: u8 = 0x18;
/// `BPF_JMP | BPF_CALL`.
pub(crate) const CALL: u8 = 0x85;

/// What a relocation (or the loader) made of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rel {
    /// Nothing: the instruction as encoded.
    None,
    /// `ld_imm64` of a map (index into [`Program::maps`]).
    Map(usize),
    /// `ld_imm64` of the address `offset` in global section `section`.
    Global { section: usize, offset: u64 },
    /// A bpf-to-bpf call to this absolute instruction index.
    Call(usize),
}

/// One decoded 8-byte instruction slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
    pub rel: Rel,
}

impl Insn {
    fn decode(b: &[u8]) -> Self {
        Insn {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            rel: Rel::None,
        }
    }
}

/// A map's definition, as the legacy `maps` section (`struct bpf_map_def`)
/// gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// The map's name (its symbol).
    pub name: String,
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (of one CPU, for per-CPU maps).
    pub value_size: u32,
    /// Number of entries (the loader may resize: see [`Program::set_max_entries`]).
    pub max_entries: u32,
    /// `BPF_F_*` flags.
    pub flags: u32,
}

impl MapDef {
    /// An array map (`ARRAY` or `PERCPU_ARRAY`): keys are `u32` indices below
    /// `max_entries`, and every element exists.
    pub fn is_array(&self) -> bool {
        matches!(self.map_type, 2 | 6)
    }
}

/// A global data section (`.rodata*`, `.data*`, `.bss*`).
#[derive(Clone, Debug)]
pub(crate) struct GlobalSection {
    pub name: String,
    pub bytes: Vec<u8>,
    pub writable: bool,
}

/// A program: one entry function and every function of the object it can
/// call, with its maps and globals. Loading resolves every relocation.
#[derive(Clone, Debug)]
pub struct Program {
    pub(crate) insns: Vec<Insn>,
    pub(crate) entry: usize,
    /// Executable sections: name and first absolute instruction index.
    pub(crate) sections: Vec<(String, usize)>,
    pub(crate) maps: Vec<MapDef>,
    pub(crate) globals: Vec<GlobalSection>,
    /// Global symbols: name → (section, offset, size).
    pub(crate) symbols: HashMap<String, (usize, usize, usize)>,
}

impl Program {
    /// Loads the function `entry` (a symbol in an executable section, e.g.
    /// `balancer` in section `xdp`) from a BPF little-endian ELF object.
    pub fn from_elf(elf: &[u8], entry: &str) -> Result<Self, VmError> {
        let file = ElfFile64::<object::LittleEndian>::parse(elf)?;
        let mut p = Program {
            insns: Vec::new(),
            entry: 0,
            sections: Vec::new(),
            maps: Vec::new(),
            globals: Vec::new(),
            symbols: HashMap::new(),
        };
        // Section index → first instruction / global section number.
        let mut code_base: HashMap<SectionIndex, usize> = HashMap::new();
        let mut global_of: HashMap<SectionIndex, usize> = HashMap::new();
        let mut maps_section = None;
        let mut btf_maps = None;
        for s in file.sections() {
            let name = s.name()?;
            if s.kind() == SectionKind::Text && s.size() > 0 {
                let data = s.data()?;
                if !data.len().is_multiple_of(8) {
                    return Err(VmError::Malformed(format!(
                        "section {name} is {} bytes, not a multiple of 8",
                        data.len()
                    )));
                }
                code_base.insert(s.index(), p.insns.len());
                p.sections.push((name.to_string(), p.insns.len()));
                p.insns.extend(data.chunks_exact(8).map(Insn::decode));
            } else if name == "maps" {
                maps_section = Some((s.index(), s.data()?));
            } else if name == ".maps" {
                btf_maps = Some(s.index());
            } else if [".rodata", ".data", ".bss"]
                .iter()
                .any(|g| name == *g || name.starts_with(&format!("{g}.")))
            {
                let bytes = if s.kind() == SectionKind::UninitializedData {
                    vec![0; s.size() as usize]
                } else {
                    s.data()?.to_vec()
                };
                global_of.insert(s.index(), p.globals.len());
                p.globals.push(GlobalSection {
                    name: name.to_string(),
                    bytes,
                    writable: !name.starts_with(".rodata"),
                });
            }
        }
        let mut map_at: HashMap<(SectionIndex, u64), usize> = HashMap::new();
        let mut entry_pc = None;
        for sym in file.symbols() {
            let Some(sec) = sym.section_index() else {
                continue;
            };
            let (name, value, size) = (sym.name()?, sym.address(), sym.size());
            if let Some((maps_idx, data)) = maps_section
                && sec == maps_idx
                && sym.kind() == SymbolKind::Data
            {
                let field = |i: u64| {
                    let o = (value + 4 * i) as usize;
                    data.get(o..o + 4)
                        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                        .ok_or_else(|| VmError::Malformed(format!("map {name} past maps")))
                };
                map_at.insert((sec, value), p.maps.len());
                p.maps.push(MapDef {
                    name: name.to_string(),
                    map_type: field(0)?,
                    key_size: field(1)?,
                    value_size: field(2)?,
                    max_entries: field(3)?,
                    flags: field(4)?,
                });
            } else if btf_maps == Some(sec) && sym.kind() == SymbolKind::Data {
                // The layout of a BTF-defined map is in BTF, which we do not
                // read: KernelMaps::configure or set_map_layout supplies it.
                map_at.insert((sec, value), p.maps.len());
                p.maps.push(MapDef {
                    name: name.to_string(),
                    map_type: 0,
                    key_size: 0,
                    value_size: 0,
                    max_entries: 0,
                    flags: 0,
                });
            } else if let Some(&g) = global_of.get(&sec)
                && sym.kind() == SymbolKind::Data
            {
                p.symbols
                    .insert(name.to_string(), (g, value as usize, size as usize));
            } else if name == entry
                && sym.kind() == SymbolKind::Text
                && let Some(&base) = code_base.get(&sec)
            {
                entry_pc = Some(base + (value / 8) as usize);
            }
        }
        p.entry = entry_pc.ok_or_else(|| VmError::NoEntry(entry.to_string()))?;
        for s in file.sections() {
            let Some(&base) = code_base.get(&s.index()) else {
                continue;
            };
            for (offset, r) in s.relocations() {
                let RelocationFlags::Elf { r_type } = r.flags() else {
                    continue;
                };
                let pc = base + (offset / 8) as usize;
                let RelocationTarget::Symbol(si) = r.target() else {
                    continue;
                };
                let sym = file.symbol_by_index(si)?;
                let symbol = sym.name().unwrap_or("?").to_string();
                let err = |p: &Program, reason: &str| VmError::Relocation {
                    at: p.location(pc),
                    r_type,
                    symbol: symbol.clone(),
                    reason: reason.to_string(),
                };
                let Some(sec) = sym.section_index() else {
                    return Err(err(&p, "symbol is undefined"));
                };
                let Some(insn) = p.insns.get(pc).copied() else {
                    return Err(err(&p, "offset outside the section"));
                };
                let rel = match r_type {
                    R_BPF_NONE => continue,
                    R_BPF_64_64 if insn.code == LD_IMM64 => {
                        let off = sym.address().wrapping_add(insn.imm as i64 as u64);
                        if maps_section.is_some_and(|(i, _)| i == sec) || btf_maps == Some(sec) {
                            match map_at.get(&(sec, off)) {
                                Some(&m) => Rel::Map(m),
                                None => return Err(err(&p, "no map at that offset")),
                            }
                        } else if let Some(&g) = global_of.get(&sec) {
                            Rel::Global {
                                section: g,
                                offset: off,
                            }
                        } else {
                            return Err(err(&p, "ld_imm64 of a symbol outside maps and globals"));
                        }
                    }
                    R_BPF_64_32 if insn.code == CALL => {
                        let Some(&callee) = code_base.get(&sec) else {
                            return Err(err(&p, "call to a non-executable section"));
                        };
                        let t =
                            (callee + (sym.address() / 8) as usize) as i64 + insn.imm as i64 + 1;
                        if t < 0 || t as usize >= p.insns.len() {
                            return Err(err(&p, "call target outside the program"));
                        }
                        Rel::Call(t as usize)
                    }
                    _ => return Err(err(&p, "unsupported relocation for this instruction")),
                };
                p.insns[pc].rel = rel;
            }
        }
        for pc in 0..p.insns.len() {
            let i = p.insns[pc];
            if i.code == CALL && i.src == 1 && i.rel == Rel::None {
                p.insns[pc].rel = Rel::Call((pc as i64 + i.imm as i64 + 1).max(0) as usize);
            }
        }
        Ok(p)
    }

    /// Sets the initial bytes of a global (as the loader's `override_global`
    /// does), e.g. `RING_SIZE`. `bytes` must be exactly the global's size.
    pub fn set_global(&mut self, symbol: &str, bytes: &[u8]) -> Result<(), VmError> {
        let &(g, off, size) = self
            .symbols
            .get(symbol)
            .ok_or_else(|| VmError::NoGlobal(symbol.to_string()))?;
        if bytes.len() != size {
            return Err(VmError::GlobalSize {
                symbol: symbol.to_string(),
                expected: size,
                got: bytes.len(),
            });
        }
        let data = &mut self.globals[g].bytes;
        let dst = data
            .get_mut(off..off + size)
            .ok_or_else(|| VmError::Malformed(format!("global {symbol} past its section")))?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    /// Sets a map's `max_entries`, as the loader does when it resizes a map.
    /// An array element the backend does not have reads as zeros below it,
    /// and is missing (NULL) at or past it.
    pub fn set_max_entries(&mut self, map: &str, max_entries: u32) -> Result<(), VmError> {
        let m = self
            .maps
            .iter_mut()
            .find(|m| m.name == map)
            .ok_or_else(|| VmError::NoMap(map.to_string()))?;
        m.max_entries = max_entries;
        Ok(())
    }

    /// Sets a map's type and sizes: needed for maps defined in `.maps` (BTF),
    /// whose layout the loader does not read (their sizes start at 0, and a
    /// helper call on such a map is an error until this or
    /// [`super::KernelMaps::configure`] sets them).
    pub fn set_map_layout(
        &mut self,
        map: &str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    ) -> Result<(), VmError> {
        let m = self
            .maps
            .iter_mut()
            .find(|m| m.name == map)
            .ok_or_else(|| VmError::NoMap(map.to_string()))?;
        (m.map_type, m.key_size, m.value_size, m.max_entries) =
            (map_type, key_size, value_size, max_entries);
        Ok(())
    }

    /// The object's maps, in the order of their symbols.
    pub fn maps(&self) -> &[MapDef] {
        &self.maps
    }

    /// Runs the program on one XDP frame (see [`super::exec`]).
    pub fn run_xdp(&self, frame: &[u8], maps: &mut dyn MapBackend) -> Result<Run, VmError> {
        super::exec::run_xdp(self, frame, maps, super::exec::DEFAULT_INSN_LIMIT)
    }

    /// A program made of raw instructions (8-byte slots, little endian) with
    /// no maps or globals; the entry is the first instruction. For tests of
    /// hand-assembled code.
    pub fn from_raw(code: &[u8]) -> Result<Self, VmError> {
        if !code.len().is_multiple_of(8) || code.is_empty() {
            return Err(VmError::Malformed(format!("{} bytes of code", code.len())));
        }
        let mut p = Program {
            insns: code.chunks_exact(8).map(Insn::decode).collect(),
            entry: 0,
            sections: vec![("raw".to_string(), 0)],
            maps: Vec::new(),
            globals: Vec::new(),
            symbols: HashMap::new(),
        };
        for pc in 0..p.insns.len() {
            let i = p.insns[pc];
            if i.code == CALL && i.src == 1 {
                p.insns[pc].rel = Rel::Call((pc as i64 + i.imm as i64 + 1).max(0) as usize);
            }
        }
        Ok(p)
    }

    /// Where absolute instruction `pc` is in the object.
    pub(crate) fn location(&self, pc: usize) -> Location {
        let (name, base) = self
            .sections
            .iter()
            .rev()
            .find(|(_, b)| *b <= pc)
            .cloned()
            .unwrap_or_else(|| ("?".to_string(), 0));
        Location {
            section: name,
            index: pc - base,
        }
    }
}
