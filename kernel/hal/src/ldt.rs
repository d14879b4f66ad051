//! Which LDT each address space carries, and loading it into LDTR.
//!
//! The object layer keeps the authoritative association (`keel_kern::object::ldt`) and
//! reports every change through `Hardware::set_vspace_ldt`, which lands in [`set`].
//! This module keeps a copy keyed by PML4 so that the thread switch
//! (`entry::prepare_thread`) can find the LDT of the address space it switches to
//! without the object layer: it looks only when CR3 changes, and when no address
//! space has an LDT (the usual case) that look is one load and a branch.
//!
//! Each CPU's GDT has an LDT descriptor (selector [`crate::gdt::LDT`]) that points at
//! the loaded LDT object's direct-map address; `PerCpu::loaded_ldt` says which object
//! (0 = the null LDT, LDTR = 0). [`set`] returns only after every CPU has reloaded
//! LDTR for the address space it runs, so a detached LDT object (about to be deleted
//! and its memory reused) is in no CPU's LDTR.
//!
//! Invariant: all calls run under the big kernel lock (the object layer's) or on the
//! CPU's own state with interrupts disabled.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use keel_kern::object::ldt::MAX_LDT_ATTACHMENTS;

/// (PML4, LDT object) pairs; PML4 0 = free.
static TABLE: [(AtomicU64, AtomicU64); MAX_LDT_ATTACHMENTS] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; MAX_LDT_ATTACHMENTS];
/// Entries in use (0 = no address space has an LDT: the switch looks no further).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Whether any address space carries an LDT. While none does, every CPU has the null
/// LDT loaded (`set` refreshes every CPU on each change), so a thread switch need not
/// look further.
#[inline(always)]
pub fn any() -> bool {
    COUNT.load(Ordering::Relaxed) != 0
}

/// Loads the LDT of address space `pml4` if this CPU has another one loaded.
#[cold]
#[inline(never)]
pub fn switch_to(pml4: u64) {
    if lookup(pml4) != crate::percpu::current().loaded_ldt {
        load(lookup(pml4));
    }
}

/// The LDT object of address space `pml4` (0 = none).
#[inline(always)]
pub fn of(pml4: u64) -> u64 {
    if COUNT.load(Ordering::Relaxed) == 0 {
        0
    } else {
        lookup(pml4)
    }
}

#[cold]
#[inline(never)]
fn lookup(pml4: u64) -> u64 {
    TABLE
        .iter()
        .find(|(p, _)| p.load(Ordering::Relaxed) == pml4)
        .map_or(0, |(_, l)| l.load(Ordering::Relaxed))
}

/// Address space `pml4` now carries LDT object `ldt` (0 = none). Every CPU reloads
/// LDTR for the address space it runs before this returns.
pub fn set(pml4: u64, ldt: u64) {
    let existing = TABLE
        .iter()
        .position(|(p, _)| p.load(Ordering::Relaxed) == pml4);
    match (existing, ldt) {
        (Some(i), 0) => {
            TABLE[i].0.store(0, Ordering::Relaxed);
            TABLE[i].1.store(0, Ordering::Relaxed);
            COUNT.fetch_sub(1, Ordering::Relaxed);
        }
        (Some(i), _) => TABLE[i].1.store(ldt, Ordering::Relaxed),
        (None, 0) => {}
        (None, _) => {
            // The object layer allows at most MAX_LDT_ATTACHMENTS, so a slot is free.
            let i = TABLE
                .iter()
                .position(|(p, _)| p.load(Ordering::Relaxed) == 0)
                .expect("LDT table full");
            TABLE[i].1.store(ldt, Ordering::Relaxed);
            TABLE[i].0.store(pml4, Ordering::Relaxed);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
    }
    refresh_local();
    crate::tlb::refresh_ldt_others();
}

/// Reloads this CPU's LDTR if the address space it runs now carries a different LDT.
pub fn refresh_local() {
    let area = crate::percpu::current();
    let want = of(area.loaded_pml4);
    if want != area.loaded_ldt {
        load(want);
    }
}

/// Loads LDT object `ldt` (physical; 0 = the null LDT) into this CPU's LDTR.
#[cold]
#[inline(never)]
pub fn load(ldt: u64) {
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: this CPU's own per-CPU area and GDT, with interrupts disabled. A non-zero
    // `ldt` is a live LDT object (the object layer detaches an object, through `set`,
    // before its memory can be reused); its descriptors were all checked to be DPL-3
    // code or data segments, so nothing in it grants privilege. LLDT with selector 0
    // makes the LDT null; with `gdt::LDT` it loads the descriptor written just before.
    unsafe {
        if ldt == 0 {
            core::arch::asm!("lldt {0:x}", in(reg) 0u64, options(nostack, preserves_flags));
        } else {
            (*area).tables.set_ldt(crate::layout::phys_to_virt(ldt));
            core::arch::asm!("lldt {0:x}", in(reg) crate::gdt::LDT as u64, options(nostack, preserves_flags));
        }
        (*area).loaded_ldt = ldt;
    }
}
