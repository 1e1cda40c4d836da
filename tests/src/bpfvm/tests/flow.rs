//! Control flow: instruction counts, bpf-to-bpf calls, errors.

use super::*;
use crate::bpfvm::{EmptyMaps, VmError};

#[test]
fn insns_count_every_executed_slot_once() {
    // ld_imm64 is two slots but one instruction.
    let a = Asm::default().ld64(0, 2).ja(1).mov(0, 9).exit();
    let (_, run) = run_on(&a, &[0; 14], &mut EmptyMaps).unwrap();
    assert_eq!(run.insns, 3);
    assert_eq!(run.action, 2);
}

#[test]
fn bpf_to_bpf_call_preserves_callee_saved_and_has_own_stack() {
    let main = Asm::default()
        .mov(6, 7) // 0
        .st(DW, 10, -8, 1000) // 1
        .mov(1, 5) // 2
        .call_rel(4) // 3: to 8
        .ldx(DW, 1, 10, -8) // 4: still 1000
        .alu64r(ADD, 0, 6) // 5: r0 = 10 + 7
        .alu64r(ADD, 0, 1) // 6
        .exit(); // 7
    let callee = Asm::default()
        .mov(6, 100)
        .st(DW, 10, -8, 1)
        .movr(0, 1)
        .alu64(MUL, 0, 2)
        .exit();
    let mut code = main.0;
    code.extend(callee.0);
    let (v, run) = run_on(&Asm(code), &[0; 14], &mut EmptyMaps).unwrap();
    assert_eq!(v, 10 + 7 + 1000);
    assert_eq!(run.insns, 8 + 5);
    assert!(run.helper_calls.is_empty());
}

#[test]
fn unbounded_recursion_is_an_error() {
    let a = Asm::default().call_rel(-1).exit();
    let err = run_on(&a, &[0; 14], &mut EmptyMaps).unwrap_err();
    assert!(matches!(err, VmError::CallDepth { .. }), "{err}");
}

#[test]
fn unknown_opcode_and_helper_name_the_place() {
    let err = run_on(
        &Asm::default().mov(0, 0).raw(0xff, 0, 0, 0, 0),
        &[0; 14],
        &mut EmptyMaps,
    )
    .unwrap_err();
    match &err {
        VmError::UnknownOpcode { at, opcode: 0xff } => assert_eq!(at.index, 1),
        e => panic!("{e}"),
    }
    assert!(
        err.to_string().contains("0xff") && err.to_string().contains("raw+1"),
        "{err}"
    );
    let err = run_on(&Asm::default().call(999).exit(), &[0; 14], &mut EmptyMaps).unwrap_err();
    assert!(
        matches!(err, VmError::UnknownHelper { id: 999, .. }),
        "{err}"
    );
    // Legacy packet access (LD_ABS) is not part of what LLVM emits for XDP.
    let err = run_on(
        &Asm::default().raw(0x30, 0, 0, 0, 0).exit(),
        &[0; 14],
        &mut EmptyMaps,
    )
    .unwrap_err();
    assert!(
        matches!(err, VmError::UnknownOpcode { opcode: 0x30, .. }),
        "{err}"
    );
    // Falling off the end.
    let err = run_on(&Asm::default().mov(0, 0), &[0; 14], &mut EmptyMaps).unwrap_err();
    assert!(
        matches!(err, VmError::PcOutOfRange { target: 1, .. }),
        "{err}"
    );
}
