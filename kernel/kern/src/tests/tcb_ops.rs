//! TCB invocations: registers, configuration errors, IPC buffer, TLS base.

use keel_abi::error::Error as E;
use keel_abi::fault::{USER_CONTEXT_WORDS, sanitise_rflags};
use keel_abi::invocation::InvocationLabel as L;

use super::*;

#[test]
fn read_and_write_registers() {
    let mut w = World::new();
    let t = w.thread(50);
    let words: Vec<u64> = (0..USER_CONTEXT_WORDS as u64).map(|i| 0x1000 + i).collect();
    // WriteRegisters: flags 0, count 20, then the words.
    let mut mrs = vec![0, USER_CONTEXT_WORDS as u64];
    mrs.extend(&words);
    mrs[2 + 2] = u64::MAX; // rflags
    w.root_ok(t.slot, L::TcbWriteRegisters, &mrs, &[]);
    let c = w.tcb(t.tcb).context;
    assert_eq!(
        (c.rip, c.rsp, c.rax, c.r15, c.fs_base, c.gs_base),
        (0x1000, 0x1001, 0x1003, 0x1011, 0x1012, 0x1013)
    );
    assert_eq!(c.rflags, sanitise_rflags(u64::MAX));
    assert_eq!(
        w.state(t.tcb),
        ThreadState::Inactive,
        "not resumed without the flag"
    );
    // ReadRegisters returns them in seL4_UserContext order.
    let r = w.root_ok(t.slot, L::TcbReadRegisters, &[0, 20], &[]);
    let mut expect = words.clone();
    expect[2] = sanitise_rflags(u64::MAX);
    assert_eq!(r.mrs, expect);
    let r = w.root_ok(t.slot, L::TcbReadRegisters, &[0, 3], &[]);
    assert_eq!(r.mrs.len(), 3);
    for count in [0, 21] {
        let r = w.root(t.slot, L::TcbReadRegisters, &[0, count], &[]);
        assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![1, 20]));
    }
    // Not on oneself.
    let r = w.root(S_TCB, L::TcbReadRegisters, &[0, 1], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
    let r = w.root(S_TCB, L::TcbWriteRegisters, &[0, 1, 0x1000], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
    // WriteRegisters with the resume flag starts it at the new RIP.
    w.root_ok(t.slot, L::TcbWriteRegisters, &[1, 1, 0x40_0000], &[]);
    assert!(w.state(t.tcb).is_runnable());
    w.make_current(t.tcb);
    assert_eq!(
        w.tcb(t.tcb).context.rip,
        0x40_0000,
        "not adjusted as a system call"
    );
    w.make_current(ROOT_TCB);
    // ReadRegisters with suspend_source stops it.
    w.root_ok(t.slot, L::TcbReadRegisters, &[1, 1], &[]);
    assert_eq!(w.state(t.tcb), ThreadState::Inactive);
    let r = w.root(t.slot, L::TcbReadRegisters, &[0], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
}

#[test]
fn copy_registers_and_tls_base() {
    let mut w = World::new();
    let a = w.thread(50);
    let b = w.thread(50);
    w.root_ok(
        a.slot,
        L::TcbWriteRegisters,
        &[0, 4, 0x41_0000, 0x7fff_1000, 0x246, 99],
        &[],
    );
    // Copy frame registers (rip…r15) from a to b.
    w.root_ok(b.slot, L::TcbCopyRegisters, &[0b100], &[a.slot]);
    let (ca, cb) = (w.tcb(a.tcb).context, w.tcb(b.tcb).context);
    assert_eq!((cb.rip, cb.rsp, cb.rflags), (ca.rip, ca.rsp, ca.rflags));
    let r = w.root(b.slot, L::TcbCopyRegisters, &[0b100], &[S_CNODE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    w.root_ok(a.slot, L::TcbSetTlsBase, &[0x1234_5000], &[]);
    assert_eq!(w.tcb(a.tcb).context.fs_base, 0x1234_5000);
    let r = w.root_ok(a.slot, L::TcbReadRegisters, &[0, 19], &[]);
    assert_eq!(r.mrs[18], 0x1234_5000);
}

#[test]
fn configure_errors_and_ipc_buffer() {
    let mut w = World::new();
    let t = w.thread(50);
    let e = w.endpoint();
    let f = w.make(keel_abi::object::ObjectType::X86Page4K, 0);
    let no_asid = w.make(keel_abi::object::ObjectType::X64Pml4, 0);
    // seL4's codes: the CSpace root must be a CNode (also after its guard change), the
    // VSpace root a PML4 with an ASID, the buffer a RAM frame; each else is
    // IllegalOperation.
    for (cspace_data, caps) in [
        (0, [e, S_VSPACE, f]),
        (0, [S_CNODE, e, f]),
        (0, [S_CNODE, no_asid, f]),
        (0, [S_CNODE, S_VSPACE, e]),
        (60, [S_CNODE, S_VSPACE, f]),
    ] {
        let r = w.root(
            t.slot,
            L::TcbConfigure,
            &[0, cspace_data, 0, 0x3000_0000],
            &caps,
        );
        assert_eq!(
            r.label,
            err(E::IllegalOperation),
            "{cspace_data:#x} {caps:?}"
        );
    }
    // The buffer must be 1 KiB aligned; seL4 looks at the capability first.
    let r = w.root(t.slot, L::TcbSetIpcBuffer, &[0x3000_0010], &[f]);
    assert_eq!(r.label, err(E::AlignmentError));
    let r = w.root(t.slot, L::TcbSetIpcBuffer, &[0x3000_0010], &[e]);
    assert_eq!(r.label, err(E::IllegalOperation));
    // Truncated: too few words, or too few capabilities even for buffer address 0.
    let r = w.root(t.slot, L::TcbConfigure, &[0, 0], &[S_CNODE, S_VSPACE, f]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(t.slot, L::TcbConfigure, &[0, 0, 0, 0], &[S_CNODE, S_VSPACE]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(t.slot, L::TcbSetIpcBuffer, &[0], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(t.slot, L::TcbSetSpace, &[0, 0, 0], &[S_CNODE]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    // A buffer at offset 0x400 of its frame.
    w.root_ok(t.slot, L::TcbSetIpcBuffer, &[0x3000_0400], &[f]);
    assert_eq!(w.k.ipc_buffer(t.tcb), Some(w.addr(f) + 0x400));
    assert!(cspace::is_parent_of(
        &w.k.hw,
        slot(f),
        tcb::slot(t.tcb, tcb::SLOT_IPC_BUFFER)
    ));
    // Buffer 0 removes it; deleting the frame removes it too.
    w.root_ok(t.slot, L::TcbSetIpcBuffer, &[0], &[f]);
    assert_eq!(w.k.ipc_buffer(t.tcb), None);
    w.root_ok(t.slot, L::TcbSetIpcBuffer, &[0x3000_0000], &[f]);
    w.root_ok(S_CNODE, L::CNodeRevoke, &[f, 64], &[]);
    assert_eq!(w.k.ipc_buffer(t.tcb), None);
    // SetSpace replaces the roots (children of the given caps).
    w.root_ok(t.slot, L::TcbSetSpace, &[e, 0, 0], &[S_CNODE, S_VSPACE]);
    assert_eq!(w.tcb(t.tcb).fault_handler, e);
    assert!(cspace::is_parent_of(
        &w.k.hw,
        slot(S_CNODE),
        tcb::slot(t.tcb, tcb::SLOT_CSPACE)
    ));
    // Unknown TCB label.
    let r = w.root(t.slot, L::CNodeCopy, &[], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
}

/// A Configure whose IPC buffer half is wrong fails with nothing done: no roots, no
/// fault endpoint, no buffer (the kernel decodes both halves before doing either).
#[test]
fn failed_configure_changes_nothing() {
    let mut w = World::new();
    let s = w.make(keel_abi::object::ObjectType::Tcb, 0);
    let t = w.addr(s);
    let e = w.endpoint();
    let f = w.make(keel_abi::object::ObjectType::X86Page4K, 0);
    let unchanged = |w: &World| {
        assert_eq!(w.tcb(t).fault_handler, 0);
        assert_eq!(w.k.ipc_buffer(t), None);
        for index in [tcb::SLOT_CSPACE, tcb::SLOT_VSPACE, tcb::SLOT_IPC_BUFFER] {
            assert!(w.cap_at(tcb::slot(t, index)).is_null(), "slot {index}");
        }
    };
    let r = w.root(
        s,
        L::TcbConfigure,
        &[e, 0, 0, 0x3000_0010],
        &[S_CNODE, S_VSPACE, f],
    );
    assert_eq!(r.label, err(E::AlignmentError));
    unchanged(&w);
    let r = w.root(
        s,
        L::TcbConfigure,
        &[e, 0, 0, 0x3000_0400],
        &[S_CNODE, S_VSPACE, e],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    unchanged(&w);
    let r = w.root(
        s,
        L::TcbConfigure,
        &[e, 0, 0, 0x3000_0400],
        &[S_CNODE, S_VSPACE],
    );
    assert_eq!(r.label, err(E::TruncatedMessage));
    unchanged(&w);
    // The same call with a good buffer does all three.
    w.root_ok(
        s,
        L::TcbConfigure,
        &[e, 0, 0, 0x3000_0400],
        &[S_CNODE, S_VSPACE, f],
    );
    assert_eq!(w.tcb(t).fault_handler, e);
    assert_eq!(w.k.ipc_buffer(t), Some(w.addr(f) + 0x400));
    assert!(!w.cap_at(tcb::slot(t, tcb::SLOT_VSPACE)).is_null());
}

#[test]
fn non_canonical_bases_are_sanitised() {
    let mut w = World::new();
    let t = w.thread(100);
    w.root_ok(t.slot, L::TcbSetTlsBase, &[0x8000_0000_0000_0000], &[]);
    assert_eq!(w.tcb(t.tcb).context.fs_base, 0);
    w.root_ok(t.slot, L::TcbSetGsBase, &[0x0000_8000_0000_0000], &[]);
    assert_eq!(w.tcb(t.tcb).context.gs_base, 0);
    w.root_ok(t.slot, L::TcbSetTlsBase, &[0xffff_8000_0000_1000], &[]);
    assert_eq!(
        w.tcb(t.tcb).context.fs_base,
        0xffff_8000_0000_1000,
        "canonical values are kept"
    );
}

#[test]
fn rseq_registration_fix_up_and_migration() {
    const AREA: u64 = 0x800;
    const DESCRIPTOR: u64 = 0x820;
    let mut w = World::with_cpus(2);
    let t = w.thread(50);
    let buffer = w.tcb(t.tcb).ipc_buffer;
    // Registration errors: misaligned; outside the IPC buffer's frame; no buffer.
    let r = w.root(t.slot, L::TcbSetRseq, &[buffer + AREA + 8], &[]);
    assert_eq!(r.label, err(E::AlignmentError));
    let r = w.root(t.slot, L::TcbSetRseq, &[buffer + 0x1000], &[]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    let bare = w.thread_with(50, false, 0);
    let r = w.root(bare.slot, L::TcbSetRseq, &[0x1000], &[]);
    assert_eq!(r.label, err(E::InvalidArgument));
    let r = w.root(t.slot, L::TcbSetRseq, &[], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    // Registered: the CPU number (both halves) is written at once.
    w.set_buffer_word(t.tcb, AREA / 8, u64::MAX);
    w.root_ok(t.slot, L::TcbSetRseq, &[buffer + AREA], &[]);
    assert_eq!(w.buffer_word(t.tcb, AREA / 8), 0);
    // A descriptor in the same frame: [version/flags, start, post-commit offset, abort].
    let rip = w.tcb(t.tcb).context.rip;
    let (start, abort) = (rip - 4, rip + 0x40);
    for (i, v) in [0, start, 8, abort].into_iter().enumerate() {
        w.set_buffer_word(t.tcb, DESCRIPTOR / 8 + i as u64, v);
    }
    let arm = |w: &mut World| w.set_buffer_word(t.tcb, AREA / 8 + 1, buffer + DESCRIPTOR);
    // Stopped in a system call: nothing is pending, nothing moves.
    arm(&mut w);
    w.k.tcb_mut(t.tcb).context.vector = tcb::SYSCALL_VECTOR;
    w.k.rseq_switched_out(t.tcb);
    w.k.rseq_resume(t.tcb);
    assert_eq!(w.tcb(t.tcb).context.rip, rip);
    assert_eq!(w.buffer_word(t.tcb, AREA / 8 + 1), buffer + DESCRIPTOR);
    // Stopped by a trap inside the section: it restarts at the abort address and the
    // section is disarmed.
    w.k.tcb_mut(t.tcb).context.vector = 32;
    w.k.rseq_switched_out(t.tcb);
    assert!(w.tcb(t.tcb).rseq_pending);
    w.k.rseq_resume(t.tcb);
    assert_eq!(w.tcb(t.tcb).context.rip, abort);
    assert_eq!(w.buffer_word(t.tcb, AREA / 8 + 1), 0);
    assert!(!w.tcb(t.tcb).rseq_pending);
    // Outside the section (RIP = start + post-commit offset): disarmed, RIP kept.
    w.k.tcb_mut(t.tcb).context.rip = start + 8;
    arm(&mut w);
    w.k.rseq_switched_out(t.tcb);
    w.k.rseq_resume(t.tcb);
    assert_eq!(w.tcb(t.tcb).context.rip, start + 8);
    assert_eq!(w.buffer_word(t.tcb, AREA / 8 + 1), 0);
    // A descriptor outside the frame is ignored.
    w.k.tcb_mut(t.tcb).context.rip = rip;
    w.set_buffer_word(t.tcb, AREA / 8 + 1, buffer + 0x2000);
    w.k.rseq_switched_out(t.tcb);
    w.k.rseq_resume(t.tcb);
    assert_eq!(w.tcb(t.tcb).context.rip, rip);
    // Migration writes the new CPU at once and makes a trap-stopped thread pending.
    w.root_ok(t.slot, L::TcbSetAffinity, &[1], &[]);
    assert_eq!(w.buffer_word(t.tcb, AREA / 8), 1 | 1 << 32);
    assert!(w.tcb(t.tcb).rseq_pending);
    // With the fix-up switched off (the negative control) nothing moves.
    w.k.user_rseq = false;
    arm(&mut w);
    w.k.rseq_resume(t.tcb);
    assert_eq!(w.tcb(t.tcb).context.rip, rip);
    assert_eq!(w.buffer_word(t.tcb, AREA / 8 + 1), buffer + DESCRIPTOR);
    // Unregistered: nothing is written any more.
    w.k.user_rseq = true;
    w.root_ok(t.slot, L::TcbSetRseq, &[0], &[]);
    w.root_ok(t.slot, L::TcbSetAffinity, &[0], &[]);
    assert_eq!(w.buffer_word(t.tcb, AREA / 8), 1 | 1 << 32);
    w.check_invariants();
}

#[test]
fn domain_set_with_one_domain() {
    let mut w = World::new();
    let t = w.thread(50);
    let e = w.endpoint();
    // Domain 0 (the only one) for a TCB succeeds; seL4's checks in seL4's order.
    w.root_ok(S_DOMAIN, L::DomainSetSet, &[0], &[t.slot]);
    let r = w.root(S_DOMAIN, L::DomainSetSet, &[1], &[t.slot]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    let r = w.root(S_DOMAIN, L::DomainSetSet, &[], &[t.slot]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(S_DOMAIN, L::DomainSetSet, &[0], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(S_DOMAIN, L::DomainSetSet, &[0], &[e]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![1]));
    let r = w.root(S_DOMAIN, L::DomainScheduleConfigure, &[0], &[t.slot]);
    assert_eq!(r.label, err(E::IllegalOperation));
}

/// The TCB argument checks seL4 makes, with its codes and in its order: missing
/// capabilities are TruncatedMessage; WriteRegisters' count may not exceed the words
/// sent; BindNotification refuses with IllegalOperation.
#[test]
fn argument_checks_follow_sel4() {
    use crate::object::cap::Rights;
    let mut w = World::new();
    let t = w.thread(50);
    let u = w.thread(50);
    let n = w.notification();
    let e = w.endpoint();
    // CopyRegisters: a word and a capability, the capability a TCB.
    let r = w.root(t.slot, L::TcbCopyRegisters, &[], &[u.slot]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(t.slot, L::TcbCopyRegisters, &[0b100], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(t.slot, L::TcbCopyRegisters, &[0b100], &[S_CNODE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    // WriteRegisters: count 5 with 3 words is truncated; a count past the context's
    // words with all of them sent is clamped.
    let r = w.root(
        t.slot,
        L::TcbWriteRegisters,
        &[0, 5, 0x40_0000, 0x7000, 0x202],
        &[],
    );
    assert_eq!(r.label, err(E::TruncatedMessage));
    let mut mrs = vec![0, 100, 0x40_0000];
    mrs.resize(2 + USER_CONTEXT_WORDS, 0);
    let r = w.root(t.slot, L::TcbWriteRegisters, &mrs, &[]);
    assert_eq!(r.label, err(E::TruncatedMessage), "100 words promised");
    mrs[1] = USER_CONTEXT_WORDS as u64;
    w.root_ok(t.slot, L::TcbWriteRegisters, &mrs, &[]);
    // The priority setters: the authority's capability must be there, then a TCB.
    for (label, mrs) in [
        (L::TcbSetPriority, &[10][..]),
        (L::TcbSetMcPriority, &[10]),
        (L::TcbSetSchedParams, &[10, 10]),
    ] {
        let r = w.root(t.slot, label, mrs, &[]);
        assert_eq!(r.label, err(E::TruncatedMessage), "{label:?}");
        let r = w.root(t.slot, label, mrs, &[S_CNODE]);
        assert_eq!(
            (r.label, r.mrs),
            (err(E::InvalidCapability), vec![1]),
            "{label:?}"
        );
    }
    // BindNotification.
    let r = w.root(t.slot, L::TcbBindNotification, &[], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(t.slot, L::TcbBindNotification, &[], &[e]);
    assert_eq!((r.label, r.mrs), (err(E::IllegalOperation), vec![]));
    let send_only = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[send_only, 64, n, 64, Rights::WRITE.0 as u64],
        &[S_CNODE],
    );
    let r = w.root(t.slot, L::TcbBindNotification, &[], &[send_only]);
    assert_eq!(r.label, err(E::IllegalOperation));
    w.root_ok(t.slot, L::TcbBindNotification, &[], &[n]);
    let r = w.root(u.slot, L::TcbBindNotification, &[], &[n]);
    assert_eq!(r.label, err(E::IllegalOperation), "bound to another thread");
    // A thread already bound is refused before its capability is looked at.
    let r = w.root(t.slot, L::TcbBindNotification, &[], &[e]);
    assert_eq!(r.label, err(E::IllegalOperation));
}
