//! TLB shootdown and PCIDs: after the object layer changes a user page table, every
//! CPU flushes what its TLB may hold of it before the change is reported done.
//!
//! The initiator (holding the big kernel lock) flushes its own TLB, raises a per-CPU
//! request flag and an IPI on every other online CPU that may hold entries of the
//! address space (without PCIDs: the CPUs that have it loaded, [`flush_others_for`];
//! with them, and for a deleted address space: every CPU), then waits until each flag
//! is cleared. A CPU clears its flag after flushing all its non-global entries
//! ([`flush_local_all`]), either in the IPI handler or while it spins for the big
//! kernel lock.
//!
//! **PCIDs** (where the CPU has PCID and INVPCID and the command line does not say
//! `keel.pcid=off`: the `UntaggedCr3` code switch is then off; CR4.PCIDE is set on
//! every CPU). A user address space runs with its ASID (1–4095, the ASID pools' whole
//! range) as its PCID; PCID 0 is the kernel's own PML4. CR3 is loaded with the no-flush
//! bit, so an address space's TLB entries survive switches away and back. Invariant: every TLB entry any CPU holds
//! for any PCID is current. It holds because every change to a user page table is
//! followed by a flush that reaches every CPU before the change is reported done
//! (locally INVPCID of the one address or of the whole PCID, on the other CPUs INVPCID
//! of every non-global entry), and an ASID that an address space gives up (the address
//! space or its ASID pool deleted) is flushed on every CPU before it can be assigned
//! again (`drop_address_space`). Without PCIDs a CR3 load drops every non-global entry,
//! so a flush only has to reach the address space each CPU has loaded.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::layout::MAX_CPUS;

/// CR3 bit 63 (with PCIDs): keep the PCID's TLB entries on this load.
const CR3_NO_FLUSH: u64 = 1 << 63;

/// Whether user address spaces run with their ASIDs as PCIDs (module docs).
pub fn pcids() -> bool {
    crate::switches::is_off(crate::switches::Switch::UntaggedCr3)
}

/// INVPCID of type `kind` (0: one address of a PCID, 1: a whole PCID, 3: every PCID's
/// non-global entries) for `pcid` and `address`.
///
/// # Safety
/// PCIDs are on (the CPU has INVPCID); `pcid` < 4096 and `address` canonical for type 0.
#[cold]
#[inline(never)]
unsafe fn invpcid(kind: u64, pcid: u64, address: u64) {
    let descriptor = [pcid, address];
    // SAFETY: as the caller guarantees; INVPCID only drops TLB and paging-structure
    // cache entries, reading the 16-byte descriptor.
    unsafe {
        core::arch::asm!(
            "invpcid {kind}, [{descriptor}]",
            kind = in(reg) kind,
            descriptor = in(reg) &descriptor,
            options(nostack, preserves_flags, readonly)
        )
    };
}

/// Switches this CPU to the user address space rooted at `pml4`, of the thread whose
/// TCB record is at physical address `context_phys` (its VSpace capability gives the
/// ASID), and records it as this CPU's (`area`) `loaded_pml4`. Without PCIDs the load
/// drops every non-global entry; with them it keeps the address space's entries
/// (module docs). The untagged load is the code as compiled; where PCIDs are on, the
/// bootstrap CPU patches its first bytes into a jump to the tagged one (`UntaggedCr3`
/// off), so neither way reads a flag.
///
/// # Safety
/// As [`crate::paging::switch_to`]: `pml4` is a complete address space, the thread's
/// assigned one (so its VSpace capability holds its ASID); `area` is this CPU's
/// per-CPU area, interrupts disabled.
#[inline(always)]
pub unsafe fn switch_to_user(pml4: u64, context_phys: u64, area: *mut crate::percpu::PerCpu) {
    use keel_kern::object::tcb;
    // SAFETY: as the caller guarantees. The block (6 bytes) holds the patched 5-byte
    // jump; the tagged way's PCID entries are current (module docs); the VSpace slot is
    // a live TCB's (the glue's record address), read through the direct map under the
    // big kernel lock.
    unsafe {
        core::arch::asm!(
            "2:",
            "mov cr3, {pml4}",
            "mov qword ptr [{area} + {loaded}], {pml4}",
            crate::patch_site!("{switch}", "2b", "{tagged}"),
            pml4 = in(reg) pml4,
            area = in(reg) area,
            loaded = const core::mem::offset_of!(crate::percpu::PerCpu, loaded_pml4),
            switch = const crate::switches::Switch::UntaggedCr3 as u64,
            tagged = label {
                let slot = context_phys - tcb::TCB_RECORD_OFFSET + tcb::slot(0, tcb::SLOT_VSPACE);
                // SAFETY: as above (the VSpace slot's second word, and this CPU's area).
                unsafe {
                    let w1 = (crate::layout::phys_to_virt(slot + 8) as *const u64).read();
                    let pcid = keel_kern::object::cap::raw::pml4_asid(w1);
                    crate::paging::switch_to(pml4 | pcid | CR3_NO_FLUSH);
                    (*area).loaded_pml4 = pml4;
                }
            },
            options(nostack, preserves_flags)
        )
    };
}

static REQUESTS: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per-CPU requests to reload LDTR (an address space's LDT changed; `crate::ldt`).
static LDT_REQUESTS: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Vector of the TLB-shootdown IPI.
pub const TLB_VECTOR: u8 = 0xf2;

/// Flushes this CPU's TLB entry for `vaddr` of the address space with ASID `asid`:
/// INVLPG (without PCIDs only the loaded address space can have entries), patched at
/// boot into a jump to INVPCID of the address in the ASID's PCID where PCIDs are on
/// (the `UntaggedCr3` switch, as in [`switch_to_user`]); no flag is read.
#[inline(always)]
pub fn flush_local_page(asid: u16, vaddr: u64) {
    // SAFETY: INVLPG only drops a TLB entry; it is encoded by hand with a 32-bit
    // displacement of 0 (`invlpg [rax + 0]`, 7 bytes), so the block holds the patched
    // 5-byte jump. The tagged way: PCIDs are on, ASIDs are below 4096 and a user
    // address is canonical.
    unsafe {
        core::arch::asm!(
            "2:",
            ".byte 0x0f, 0x01, 0xb8, 0, 0, 0, 0",
            crate::patch_site!("{switch}", "2b", "{tagged}"),
            in("rax") vaddr,
            switch = const crate::switches::Switch::UntaggedCr3 as u64,
            tagged = label {
                // SAFETY: as above.
                unsafe { invpcid(0, asid as u64, vaddr) };
            },
            options(nostack, preserves_flags)
        )
    };
}

/// Flushes this CPU's TLB entries of the address space with ASID `asid`.
pub fn flush_local_address_space(asid: u16) {
    if pcids() {
        // SAFETY: PCIDs are on; ASIDs are below 4096.
        unsafe { invpcid(1, asid as u64, 0) };
    } else {
        flush_local_all();
    }
}

/// Flushes every non-global TLB entry of this CPU (every address space's).
pub fn flush_local_all() {
    if pcids() {
        // SAFETY: PCIDs are on.
        unsafe { invpcid(3, 0, 0) };
        return;
    }
    let cr3 = crate::paging::current_pml4();
    // SAFETY: reloading CR3 with its current value keeps the address space.
    unsafe { crate::paging::switch_to(cr3) };
}

/// Makes every other online CPU flush its TLB and waits until all have.
pub fn flush_others() {
    flush_others_where(|_| true);
}

/// Makes the other CPUs that may hold TLB entries of the user address space rooted at
/// `pml4` flush them, and waits until they have. With PCIDs that is every CPU (an
/// address space's entries outlive switches away). Without them only a CPU that has
/// it loaded: a CR3 load drops every non-global entry (user entries are never global),
/// so a CPU on another address space holds none of this one's. The caller holds the
/// big kernel lock, under which every switch to a user address space happens
/// ([`switch_to_user`]), so no CPU can load `pml4` meanwhile; a CPU that leaves it
/// for the kernel's own (idle, [`use_kernel_address_space`]) records that after its
/// CR3 load, so a stale `loaded_pml4` can only cost an IPI too many.
pub fn flush_others_for(pml4: u64) {
    if pcids() {
        flush_others();
    } else {
        // SAFETY: an aligned 8-byte volatile read of another CPU's `loaded_pml4`, which
        // that CPU writes with single 8-byte stores (no torn value on x86-64), like its
        // other per-CPU fields that other CPUs look at. (An `AtomicU64` would cost the
        // thread switch an instruction: its load is not folded into the compare.)
        flush_others_where(|area| unsafe { core::ptr::read_volatile(&area.loaded_pml4) } == pml4);
    }
}

/// Makes every other online CPU for which `target` holds flush its TLB, and waits until
/// each has.
fn flush_others_where(target: impl Fn(&crate::percpu::PerCpu) -> bool) {
    let me = crate::percpu::cpu_index();
    let cpus = crate::smp::online_cpus();
    if cpus <= 1 {
        return;
    }
    let mut asked = 0u64;
    for cpu in (0..cpus).filter(|&c| c != me) {
        if let Some(area) = crate::percpu::area(cpu)
            && target(area)
        {
            REQUESTS[cpu].store(true, Ordering::Release);
            crate::apic::send_ipi(area.apic_id, TLB_VECTOR);
            asked |= 1 << cpu;
        }
    }
    for cpu in (0..cpus).filter(|&c| asked & (1 << c) != 0) {
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
