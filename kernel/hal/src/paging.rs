//! Page tables: the kernel's address space and user address spaces.
//!
//! Every address space has its own PML4; slots 256–511 (the kernel half) point to the
//! same PDPTs in all of them. Those PDPTs are allocated once at boot for every kernel
//! slot, so a later kernel mapping (a stack for a new CPU) is seen by every address
//! space without touching their PML4s. Tables are reached through the direct map.
//!
//! Invariants: a user-accessible mapping only ever exists below `layout::USER_END`;
//! the NX bit is only set when EFER.NXE is on (otherwise it is a reserved bit).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::layout::{self, PAGE_SIZE};
use crate::memory;

/// Present.
pub const PRESENT: u64 = 1 << 0;
/// Writable.
pub const WRITABLE: u64 = 1 << 1;
/// Accessible from ring 3.
pub const USER: u64 = 1 << 2;
/// Write-through.
pub const WRITE_THROUGH: u64 = 1 << 3;
/// Cache disabled.
pub const NO_CACHE: u64 = 1 << 4;
/// Large page (in a PDPT or PD entry).
pub const HUGE: u64 = 1 << 7;
/// Global (not flushed on CR3 writes when CR4.PGE is on).
pub const GLOBAL: u64 = 1 << 8;
/// No-execute (only when the CPU has NX).
pub const NO_EXECUTE: u64 = 1 << 63;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);
static NX_MASK: AtomicU64 = AtomicU64::new(0);

/// Page sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Small,
    /// 2 MiB.
    Large,
    /// 1 GiB.
    Huge,
}

impl PageSize {
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Small => 4096,
            PageSize::Large => 2 << 20,
            PageSize::Huge => 1 << 30,
        }
    }
    const fn leaf_level(self) -> usize {
        match self {
            PageSize::Small => 1,
            PageSize::Large => 2,
            PageSize::Huge => 3,
        }
    }
}

/// What a virtual address maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the byte.
    pub phys: u64,
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
    /// Executable (no NX at any level).
    pub executable: bool,
}

fn table(phys: u64) -> *mut [u64; 512] {
    layout::phys_to_virt(phys) as *mut [u64; 512]
}

fn index(virt: u64, level: usize) -> usize {
    ((virt >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// Maps `virt` to `phys` in the address space rooted at `pml4` (an existing mapping
/// of that page is replaced). Intermediate tables are allocated as needed.
pub fn map(pml4: u64, virt: u64, phys: u64, flags: u64, size: PageSize) {
    assert!(
        virt.is_multiple_of(size.bytes()) && phys.is_multiple_of(size.bytes()),
        "unaligned mapping {virt:#x} -> {phys:#x}"
    );
    assert!(layout::is_canonical(virt));
    let user = virt < layout::USER_END;
    let flags = flags & !(NO_EXECUTE & !NX_MASK.load(Ordering::Relaxed));
    let mut table_phys = pml4;
    let mut level = 4;
    while level > size.leaf_level() {
        let slot = index(virt, level);
        // SAFETY: `table_phys` is a page table of this address space (the root or an
        // entry we followed), reachable through the direct map; the kernel serialises
        // page-table edits of an address space (boot code, or the owner's lock).
        let entry = unsafe { &mut (*table(table_phys))[slot] };
        if *entry & PRESENT == 0 {
            let new = memory::allocate_zeroed_frame();
            *entry = new | PRESENT | WRITABLE | if user { USER } else { 0 };
        }
        assert!(*entry & HUGE == 0, "mapping {virt:#x} inside a large page");
        table_phys = *entry & ADDRESS_MASK;
        level -= 1;
    }
    let huge = if size == PageSize::Small { 0 } else { HUGE };
    // SAFETY: as above; the leaf table belongs to this address space.
    unsafe { (*table(table_phys))[index(virt, level)] = phys | flags | huge | PRESENT };
    flush(virt);
}

/// Removes the 4 KiB mapping of `virt`; returns the frame it mapped.
pub fn unmap(pml4: u64, virt: u64) -> Option<u64> {
    let mut table_phys = pml4;
    for level in (2..=4).rev() {
        // SAFETY: walking this address space's tables through the direct map.
        let entry = unsafe { (*table(table_phys))[index(virt, level)] };
        if entry & PRESENT == 0 || entry & HUGE != 0 {
            return None;
        }
        table_phys = entry & ADDRESS_MASK;
    }
    // SAFETY: the leaf table of this address space.
    let entry = unsafe { &mut (*table(table_phys))[index(virt, 1)] };
    if *entry & PRESENT == 0 {
        return None;
    }
    let phys = *entry & ADDRESS_MASK;
    *entry = 0;
    flush(virt);
    Some(phys)
}

/// Translates `virt` in the address space rooted at `pml4`.
pub fn translate(pml4: u64, virt: u64) -> Option<Translation> {
    if !layout::is_canonical(virt) {
        return None;
    }
    let mut table_phys = pml4;
    let (mut writable, mut user, mut executable) = (true, true, true);
    for level in (1..=4).rev() {
        // SAFETY: walking this address space's tables through the direct map.
        let entry = unsafe { (*table(table_phys))[index(virt, level)] };
        if entry & PRESENT == 0 {
            return None;
        }
        writable &= entry & WRITABLE != 0;
        user &= entry & USER != 0;
        executable &= entry & NO_EXECUTE == 0;
        let page_bytes = 1u64 << (12 + 9 * (level - 1));
        if level == 1 || entry & HUGE != 0 {
            let phys = (entry & ADDRESS_MASK & !(page_bytes - 1)) + (virt & (page_bytes - 1));
            return Some(Translation {
                phys,
                writable,
                user,
                executable,
            });
        }
        table_phys = entry & ADDRESS_MASK;
    }
    None
}

fn flush(virt: u64) {
    // SAFETY: INVLPG only drops a TLB entry.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) virt, options(nostack, preserves_flags)) };
}

/// Physical address of the kernel's own PML4.
pub fn kernel_pml4() -> u64 {
    KERNEL_PML4.load(Ordering::Relaxed)
}

/// Physical address of the PML4 the CPU is using.
pub fn current_pml4() -> u64 {
    // SAFETY: reading CR3 has no side effects.
    unsafe { x86::controlregs::cr3() & ADDRESS_MASK }
}

/// Switches the CPU to the address space rooted at `pml4`.
///
/// # Safety
/// `pml4` must be a complete address space made by this module (kernel half present).
pub unsafe fn switch_to(pml4: u64) {
    // SAFETY: the caller guarantees the kernel half is mapped, so execution continues.
    unsafe { x86::controlregs::cr3_write(pml4) };
}

/// A new user address space: an empty lower half and the shared kernel half.
pub fn new_user_space() -> u64 {
    let pml4 = memory::allocate_zeroed_frame();
    let kernel = kernel_pml4();
    // SAFETY: both are PML4 frames reached through the direct map; the new one is ours.
    unsafe {
        let (src, dst) = (&*table(kernel), &mut *table(pml4));
        dst[layout::FIRST_KERNEL_PML4_SLOT..]
            .copy_from_slice(&src[layout::FIRST_KERNEL_PML4_SLOT..]);
    }
    pml4
}

/// Frees the user half of an address space (page tables and the frames they map) and
/// its PML4. The address space must not be in use on any CPU.
pub fn destroy_user_space(pml4: u64) {
    fn free_level(table_phys: u64, level: usize) {
        for slot in 0..512 {
            // SAFETY: a table of the dying address space, reached through the direct map.
            let entry = unsafe { (*table(table_phys))[slot] };
            if entry & PRESENT == 0 {
                continue;
            }
            let next = entry & ADDRESS_MASK;
            if level > 1 && entry & HUGE == 0 {
                free_level(next, level - 1);
            } else if level > 1 {
                continue; // user huge pages are not created yet
            }
            let _ = memory::free_frame(next);
        }
    }
    for slot in 0..layout::FIRST_KERNEL_PML4_SLOT {
        // SAFETY: the PML4 of the dying address space.
        let entry = unsafe { (*table(pml4))[slot] };
        if entry & PRESENT != 0 {
            free_level(entry & ADDRESS_MASK, 3);
            let _ = memory::free_frame(entry & ADDRESS_MASK);
        }
    }
    let _ = memory::free_frame(pml4);
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __kernel_virt_end: u8;
}

/// Builds the kernel's page tables (direct map up to `direct_map_top`, the kernel image
/// with per-section rights, all kernel PML4 slots populated) and switches to them.
pub fn init_kernel_space(direct_map_top: u64) {
    let features = crate::cpu::features();
    if features.nx {
        NX_MASK.store(NO_EXECUTE, Ordering::Relaxed);
    }
    let pml4 = memory::allocate_zeroed_frame();
    for slot in layout::FIRST_KERNEL_PML4_SLOT..512 {
        let pdpt = memory::allocate_zeroed_frame();
        // SAFETY: the new PML4 is ours alone until CR3 points at it.
        unsafe { (*table(pml4))[slot] = pdpt | PRESENT | WRITABLE };
    }
    let global = if features.pge { GLOBAL } else { 0 };
    let data = WRITABLE | NO_EXECUTE | global;
    let size = if features.huge_1g {
        PageSize::Huge
    } else {
        PageSize::Large
    };
    let mut phys = 0;
    while phys < direct_map_top {
        map(pml4, layout::phys_to_virt(phys), phys, data, size);
        phys += size.bytes();
    }
    let (text, text_end, rodata, rodata_end, data_start, end) = (
        &raw const __text_start as u64,
        &raw const __text_end as u64,
        &raw const __rodata_start as u64,
        &raw const __rodata_end as u64,
        &raw const __data_start as u64,
        &raw const __kernel_virt_end as u64,
    );
    let guard = crate::boot::boot_stack_guard();
    let mut virt = text & !(PAGE_SIZE - 1);
    while virt < end {
        let flags = if virt < text_end {
            global
        } else if (rodata..rodata_end).contains(&virt) || virt < data_start {
            NO_EXECUTE | global
        } else {
            data
        };
        if virt != guard {
            map(
                pml4,
                virt,
                layout::image_virt_to_phys(virt),
                flags,
                PageSize::Small,
            );
        }
        virt += PAGE_SIZE;
    }
    KERNEL_PML4.store(pml4, Ordering::Relaxed);
    // SAFETY: the new tables map the kernel image (where we execute), the boot stack
    // (where we run) and the direct map, at the same addresses as the boot tables.
    unsafe { switch_to(pml4) };
}

/// Maps CPU `cpu`'s espfix64 ministack page (`page`, physical) at all 65536 aliases
/// `ESPFIX_BASE + cpu * 4 GiB + e * 64 KiB` in the kernel half (shared by every address
/// space): one page table with the page at every 16th entry (32 aliases per 2 MiB), one
/// page directory whose 512 entries all point at that table, and 4 entries of the
/// slot's shared PDPT pointing at that directory. Runs on the bootstrap CPU before
/// `cpu` starts.
pub fn map_espfix(cpu: usize, page: u64) {
    let base = layout::ESPFIX_BASE + cpu as u64 * layout::ESPFIX_CPU_SPAN;
    let global = if crate::cpu::features().pge {
        GLOBAL
    } else {
        0
    };
    let nx = NX_MASK.load(Ordering::Relaxed);
    let pt = memory::allocate_zeroed_frame();
    let pd = memory::allocate_zeroed_frame();
    // SAFETY: `pt` and `pd` are fresh frames only this function references until they
    // are linked below; the PDPT of the espfix slot was allocated by
    // `init_kernel_space` and its entries for `cpu` are written only here, once.
    unsafe {
        for i in (0..512).step_by(16) {
            (*table(pt))[i] = page | PRESENT | WRITABLE | global | (NO_EXECUTE & nx);
        }
        for i in 0..512 {
            (*table(pd))[i] = pt | PRESENT | WRITABLE;
        }
        let pml4e = (*table(kernel_pml4()))[index(base, 4)];
        assert!(pml4e & PRESENT != 0, "espfix slot has no PDPT");
        let pdpt = pml4e & ADDRESS_MASK;
        for i in 0..4 {
            (*table(pdpt))[index(base, 3) + i] = pd | PRESENT | WRITABLE;
        }
    }
}

/// Maps (or unmaps) the first 2 MiB of physical memory at virtual address 0 in the
/// kernel's address space: the AP trampoline runs there while it turns on paging.
pub fn identity_map_low_memory(present: bool) {
    let pml4 = kernel_pml4();
    if present {
        map(pml4, 0, 0, WRITABLE, PageSize::Large);
    } else {
        // SAFETY: slot 0 of the kernel PML4 holds only this temporary mapping.
        unsafe { (*table(pml4))[0] = 0 };
        // SAFETY: reloading CR3 with its own value flushes the non-global TLB entries.
        unsafe { switch_to(current_pml4()) };
    }
}
