//! TLB shootdown: after the object layer changes a user page table, every other CPU
//! flushes its TLB before the change is reported done.
//!
//! The initiator (holding the big kernel lock) raises a per-CPU request flag and an IPI
//! on every other online CPU, then waits until each flag is cleared. A CPU clears its
//! flag after reloading CR3 (which drops all non-global entries), either in the IPI
//! handler or while it spins for the big kernel lock.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::layout::MAX_CPUS;

static REQUESTS: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Vector of the TLB-shootdown IPI.
pub const TLB_VECTOR: u8 = 0xf2;

/// Flushes this CPU's TLB entry for `vaddr` in the current address space.
pub fn flush_local_page(vaddr: u64) {
    // SAFETY: INVLPG only drops a TLB entry.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) vaddr, options(nostack, preserves_flags)) };
}

/// Flushes this CPU's non-global TLB entries.
pub fn flush_local_all() {
    let cr3 = crate::paging::current_pml4();
    // SAFETY: reloading CR3 with its current value keeps the address space.
    unsafe { crate::paging::switch_to(cr3) };
}

/// Makes every other online CPU flush its TLB and waits until all have.
pub fn flush_others() {
    let me = crate::percpu::cpu_index();
    let cpus = crate::smp::online_cpus();
    if cpus <= 1 {
        return;
    }
    for cpu in (0..cpus).filter(|&c| c != me) {
        REQUESTS[cpu].store(true, Ordering::Release);
        if let Some(area) = crate::percpu::area(cpu) {
            crate::apic::send_ipi(area.apic_id, TLB_VECTOR);
        }
    }
    for cpu in (0..cpus).filter(|&c| c != me) {
        while REQUESTS[cpu].load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
}

/// Carries out this CPU's pending flush request, if any.
pub fn service_request() {
    let me = crate::percpu::cpu_index();
    if REQUESTS[me].load(Ordering::Acquire) {
        flush_local_all();
        REQUESTS[me].store(false, Ordering::Release);
    }
}
