//! Hardware debug registers: a thread's breakpoints are in DR0–DR3/DR7 only while it
//! runs.
//!
//! The object layer validates every breakpoint (user addresses only, local enables, no
//! general-detect), so a thread's breakpoints can never match a kernel instruction or
//! a kernel data access. When the next thread has none, DR7 is cleared, so another
//! thread's breakpoints never fire for it.

use keel_kern::object::tcb::Tcb;

use crate::switches::{Switch, is_off};

/// DR7 bits the object layer may set: L0–L3 (0, 2, 4, 6), R/W and LEN (16–31).
const DR7_ALLOWED: u64 = 0x55 | 0xffff_0000;

/// Loads `tcb`'s breakpoints, or clears DR7 if it has none and some were loaded.
pub fn load(tcb: &Tcb) {
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    let d = &tcb.debug;
    // SAFETY: this CPU's own area (interrupts disabled); the debug registers only
    // decide when #DB is raised, and DR7 gets only user-mode-relevant bits (addresses
    // checked to be user addresses by the object layer; masked again here).
    unsafe {
        if d.any_breakpoint() {
            core::arch::asm!(
                "mov dr0, {0}",
                "mov dr1, {1}",
                "mov dr2, {2}",
                "mov dr3, {3}",
                "mov dr7, {4}",
                in(reg) d.address[0],
                in(reg) d.address[1],
                in(reg) d.address[2],
                in(reg) d.address[3],
                in(reg) (d.dr7 & DR7_ALLOWED) | (1 << 10),
                options(nomem, nostack)
            );
            (*area).debug_loaded = true;
        } else if (*area).debug_loaded && !is_off(Switch::DebugRegs) {
            core::arch::asm!("mov dr7, {}", in(reg) 1u64 << 10, options(nomem, nostack));
            (*area).debug_loaded = false;
        }
    }
}

/// DR7 of this CPU (tests).
pub fn dr7() -> u64 {
    let v: u64;
    // SAFETY: reading DR7 has no side effects.
    unsafe { core::arch::asm!("mov {}, dr7", out(reg) v, options(nomem, nostack)) };
    v
}
