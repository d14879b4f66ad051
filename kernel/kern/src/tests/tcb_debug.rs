//! The hardware-debug TCB invocations, decoded as seL4 decodes them.

use keel_abi::error::Error as E;
use keel_abi::invocation::InvocationLabel as L;

use super::*;

/// SetBreakpoint takes seL4's checks in seL4's order (decodeSetBreakpoint, then the
/// x86 slot check): the slot (a 16-bit number) comes last; a data breakpoint on reads
/// is accepted and watches reads and writes.
#[test]
fn set_breakpoint_checks_in_sel4_order() {
    let mut w = World::new();
    let thread = w.running_thread(100);
    let t = thread.slot;
    let set = |w: &mut World, mrs: [u64; 5]| w.root(t, L::TcbSetBreakpoint, &mrs, &[]);
    let arg = |i| (err(E::InvalidArgument), vec![i]);
    for (mrs, expected) in [
        // Every later argument bad too: the address wins.
        ([9, 0x7fff_ffff_ffff, 7, 3, 9], arg(1)),
        ([9, 0x1000, 7, 3, 9], arg(2)),
        // Instruction: size 0 (seL4 refuses 1), then access "read".
        ([9, 0x1000, 1, 1, 0], arg(3)),
        ([9, 0x1000, 1, 0, 1], arg(4)),
        // Data: an unknown access is argument 3, as in seL4.
        ([9, 0x1000, 0, 4, 3], arg(3)),
        ([9, 0x1000, 0, 0, 1], arg(3)),
        ([9, 0x1000, 0, 3, 1], arg(3)),
        ([9, 0x1002, 0, 4, 1], (err(E::AlignmentError), vec![])),
        // Only then the slot.
        ([4, 0x1000, 0, 4, 1], (err(E::RangeError), vec![0, 3])),
    ] {
        let r = set(&mut w, mrs);
        assert_eq!((r.label, r.mrs), expected, "{mrs:?}");
    }
    assert_eq!(w.tcb(thread.tcb).debug.dr7, 0, "nothing was set");
    // Slot 0x1_0002 is slot 2; BreakOnRead on data watches reads and writes.
    let r = set(&mut w, [0x1_0002, 0x2000, 0, 4, 0]);
    assert_eq!(r.label, 0);
    let r = w.root_ok(t, L::TcbGetBreakpoint, &[2], &[]);
    assert_eq!(r.mrs, vec![0x2000, 0, 4, 2, 1]);
    let r = w.root_ok(t, L::TcbGetBreakpoint, &[0x1_0002], &[]);
    assert_eq!(r.mrs, vec![0x2000, 0, 4, 2, 1]);
    let r = w.root(t, L::TcbUnsetBreakpoint, &[4], &[]);
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![0, 3]));
    w.root_ok(t, L::TcbUnsetBreakpoint, &[0x1_0002], &[]);
    assert_eq!(w.tcb(thread.tcb).debug.dr7, 0);
}
