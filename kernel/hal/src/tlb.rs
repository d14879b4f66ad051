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
/// Per-CPU requests to reload LDTR (an address space's LDT changed; `crate::ldt`).
static LDT_REQUESTS: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

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

/// Makes every other online CPU reload its LDTR for the address space it runs (same
/// IPI and wait as a flush) and waits until all have.
pub fn refresh_ldt_others() {
    let me = crate::percpu::cpu_index();
    let cpus = crate::smp::online_cpus();
    for cpu in (0..cpus).filter(|&c| c != me) {
        LDT_REQUESTS[cpu].store(true, Ordering::Release);
        if let Some(area) = crate::percpu::area(cpu) {
            crate::apic::send_ipi(area.apic_id, TLB_VECTOR);
        }
    }
    for cpu in (0..cpus).filter(|&c| c != me) {
        while LDT_REQUESTS[cpu].load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
}

/// Carries out this CPU's pending flush and LDT requests, if any.
pub fn service_request() {
    let me = crate::percpu::cpu_index();
    if REQUESTS[me].load(Ordering::Acquire) {
        leave_if_dying();
        flush_local_all();
        REQUESTS[me].store(false, Ordering::Release);
    }
    if LDT_REQUESTS[me].load(Ordering::Acquire) {
        crate::ldt::refresh_local();
        LDT_REQUESTS[me].store(false, Ordering::Release);
    }
}

/// The PML4 of an address space being deleted (0 = none), while its shootdown runs.
static DYING: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Makes every CPU stop using the address space rooted at `pml4` (it is being
/// deleted and its memory may be reused): a CPU on it moves to the kernel's own
/// address space, and every CPU flushes its TLB. Waits until all have.
pub fn drop_address_space(pml4: u64) {
    DYING.store(pml4, Ordering::Release);
    leave_if_dying();
    flush_local_all();
    flush_others();
    DYING.store(0, Ordering::Release);
}

/// Switches this CPU to the kernel's address space if it is on the dying one.
fn leave_if_dying() {
    let dying = DYING.load(Ordering::Acquire);
    if dying != 0 && crate::paging::current_pml4() == dying {
        use_kernel_address_space();
    }
}

/// Switches this CPU to the kernel's own address space (idle, or its address space is
/// going away).
pub fn use_kernel_address_space() {
    let kernel = crate::paging::kernel_pml4();
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: this CPU's own area with interrupts disabled; the kernel PML4 maps the
    // whole kernel half (where we run), so execution continues.
    unsafe {
        if crate::paging::current_pml4() != kernel {
            crate::paging::switch_to(kernel);
        }
        (*area).loaded_pml4 = kernel;
    }
}
