//! Memory: the stack, atomics, the packet and the helpers that move it.

use super::*;
use crate::bpfvm::{EmptyMaps, Fault, VmError};

#[test]
fn stack_loads_stores_and_sign_extension() {
    let a = Asm::default()
        .ld64(1, 0x8081_8283_8485_8687)
        .stx(DW, 10, 1, -8)
        .st(W, 10, -12, -2)
        .ldx(B, 2, 10, -8) // 0x87
        .ldx(H, 3, 10, -7) // unaligned: 0x8586
        .ldxsx(B, 4, 10, -8) // -121
        .ldxsx(W, 5, 10, -12) // -2
        .movr(0, 2)
        .alu64r(ADD, 0, 3)
        .alu64r(ADD, 0, 4)
        .alu64r(ADD, 0, 5);
    assert_eq!(r0(a), 0x87 + 0x8586 - 121 - 2);
    // The stack is 512 bytes: r10 - 513 is outside it, r10 + 0 too.
    for off in [-513i16, 0] {
        let a = Asm::default().ldx(B, 0, 10, off).exit();
        let err = run_on(&a, &[0; 14], &mut EmptyMaps).unwrap_err();
        assert!(
            matches!(
                err,
                VmError::Access {
                    fault: Fault::OutOfBounds { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
    // r10 is read-only.
    let err = run_on(&Asm::default().mov(10, 0).exit(), &[0; 14], &mut EmptyMaps).unwrap_err();
    assert!(matches!(err, VmError::BadRegister { reg: 10, .. }), "{err}");
}

#[test]
fn atomics() {
    const FETCH: i32 = 1;
    let base = || Asm::default().mov(1, 10).stx(DW, 10, 1, -8).mov(2, 5);
    let read = |a: Asm| a.ldx(DW, 0, 10, -8).exit();
    let cases: Vec<(&str, Asm, u64)> = vec![
        ("add", read(base().atomic(DW, 10, 2, -8, ADD as i32)), 15),
        ("or", read(base().atomic(DW, 10, 2, -8, OR as i32)), 15),
        ("and", read(base().atomic(DW, 10, 2, -8, AND as i32)), 0),
        ("xor", read(base().atomic(DW, 10, 2, -8, XOR as i32)), 15),
        (
            "fetch_add old",
            base()
                .atomic(DW, 10, 2, -8, ADD as i32 | FETCH)
                .movr(0, 2)
                .exit(),
            10,
        ),
        (
            "xchg",
            base()
                .atomic(DW, 10, 2, -8, 0xe1)
                .alu64(MUL, 2, 100)
                .ldx(DW, 0, 10, -8)
                .alu64r(ADD, 0, 2)
                .exit(),
            1005,
        ),
        (
            "cmpxchg hit",
            base()
                .mov(0, 10)
                .atomic(DW, 10, 2, -8, 0xf1)
                .ldx(DW, 3, 10, -8)
                .alu64(MUL, 3, 100)
                .alu64r(ADD, 0, 3)
                .exit(),
            510,
        ),
        (
            "cmpxchg miss",
            base()
                .mov(0, 9)
                .atomic(DW, 10, 2, -8, 0xf1)
                .ldx(DW, 3, 10, -8)
                .alu64(MUL, 3, 100)
                .alu64r(ADD, 0, 3)
                .exit(),
            1010,
        ),
        (
            "add32 wraps in 32 bits",
            Asm::default()
                .st(W, 10, -4, -1)
                .st(W, 10, -8, 7)
                .mov(2, 1)
                .atomic(W, 10, 2, -4, 0)
                .ldx(DW, 0, 10, -8)
                .exit(),
            7,
        ),
        (
            "fetch_add32 zero-extends",
            Asm::default()
                .st(W, 10, -4, -1)
                .mov(2, 1)
                .atomic(W, 10, 2, -4, FETCH)
                .movr(0, 2)
                .exit(),
            0xffff_ffff,
        ),
    ];
    for (name, prog, want) in cases {
        assert_eq!(
            run_on(&prog, &[0; 14], &mut EmptyMaps).unwrap().0,
            want,
            "{name}"
        );
    }
}

/// r2 = data, r3 = data_end (the context's 32-bit loads yield pointers).
fn packet_ptrs() -> Asm {
    Asm::default().ldx(W, 2, 1, 0).ldx(W, 3, 1, 4)
}

#[test]
fn packet_reads_are_bounded_by_data_end() {
    let frame: Vec<u8> = (0..20).collect();
    // data_end - data is the frame length.
    let a = packet_ptrs().movr(0, 3).alu64r(SUB, 0, 2).exit();
    assert_eq!(run_on(&a, &frame, &mut EmptyMaps).unwrap().0, 20);
    let a = packet_ptrs().ldx(B, 0, 2, 19).exit();
    assert_eq!(run_on(&a, &frame, &mut EmptyMaps).unwrap().0, 19);
    for (size, off) in [(B, 20i16), (W, 17), (B, -1)] {
        let a = packet_ptrs().ldx(size, 0, 2, off).exit();
        let err = run_on(&a, &frame, &mut EmptyMaps).unwrap_err();
        match &err {
            VmError::Access {
                write: false,
                fault: Fault::OutOfBounds { region, .. },
                ..
            } => {
                assert_eq!(region, "the packet")
            }
            e => panic!("{e}"),
        }
    }
    // NULL and the context cannot be written.
    let err = run_on(
        &Asm::default().mov(2, 0).st(B, 2, 0, 1).exit(),
        &frame,
        &mut EmptyMaps,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Access {
                fault: Fault::Unmapped,
                write: true,
                ..
            }
        ),
        "{err}"
    );
    let err = run_on(
        &Asm::default().st(W, 1, 0, 1).exit(),
        &frame,
        &mut EmptyMaps,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Access {
                fault: Fault::Context { .. },
                ..
            }
        ),
        "{err}"
    );
    // ingress_ifindex, rx_queue_index.
    let a = Asm::default()
        .ldx(W, 0, 1, 12)
        .ldx(W, 2, 1, 16)
        .alu64r(ADD, 0, 2)
        .exit();
    assert_eq!(run_on(&a, &frame, &mut EmptyMaps).unwrap().0, 1);
}

#[test]
fn adjust_head_and_tail() {
    let frame: Vec<u8> = (0..20).collect();
    // Grow the head by 4, write 0xaa at the new data, shrink the tail by 2.
    let a = Asm::default()
        .movr(6, 1)
        .mov(2, -4)
        .call(44)
        .movr(7, 0)
        .movr(1, 6)
        .ldx(W, 2, 1, 0)
        .st(B, 2, 0, 0xaa)
        .movr(1, 6)
        .mov(2, -2)
        .call(65)
        .alu64r(OR, 0, 7)
        .exit();
    let (v, run) = run_on(&a, &frame, &mut EmptyMaps).unwrap();
    assert_eq!(v, 0);
    let mut want = vec![0xaa, 0, 0, 0];
    want.extend(0..18);
    assert_eq!(run.packet, want);
    assert_eq!(run.helper_calls.get(&44), Some(&1));
    assert_eq!(run.helper_calls.get(&65), Some(&1));
    // Out of the buffer, or below an Ethernet header: -EINVAL.
    for (helper, delta) in [(44, -300), (44, 7), (65, -7), (65, 10_000)] {
        let a = Asm::default().mov(2, delta).call(helper).exit();
        let (v, run) = run_on(&a, &frame, &mut EmptyMaps).unwrap();
        assert_eq!(v as i64, -22, "helper {helper} delta {delta}");
        assert_eq!(run.packet, frame);
    }
    // Growing the tail zeroes the new bytes and they can be read.
    let a = Asm::default()
        .movr(6, 1)
        .mov(2, 8)
        .call(65)
        .ldx(W, 2, 6, 0)
        .ldx(B, 0, 2, 27)
        .exit();
    let (v, run) = run_on(&a, &frame, &mut EmptyMaps).unwrap();
    assert_eq!((v, run.packet.len()), (0, 28));
}

#[test]
fn time_helpers_and_cpu() {
    let a = Asm::default()
        .call(5)
        .movr(6, 0)
        .call(5)
        .alu64r(SUB, 0, 6)
        .movr(6, 0)
        .call(118)
        .movr(7, 0)
        .call(14)
        .alu64r(ADD, 0, 6)
        .exit();
    let (v, run) = run_on(&a, &[0; 14], &mut EmptyMaps).unwrap();
    assert_eq!(v, crate::bpfvm::helpers::KTIME_STEP_NS);
    assert_eq!(run.helper_calls.get(&5), Some(&2));
}
