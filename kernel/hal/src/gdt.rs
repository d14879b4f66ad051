//! Per-CPU GDT, TSS and stacks.
//!
//! Selectors (fixed; SYSCALL/SYSRET depend on the order):
//! `0x08` kernel code, `0x10` kernel data, `0x1b` user data, `0x23` user code (64-bit),
//! `0x28` TSS (two slots), `0x38` the LDT of the running thread's address space (two
//! slots; rewritten by [`crate::ldt`] when it changes).
//!
//! Each CPU has six stacks in the kernel stack region, each [`layout::STACK_SIZE`]
//! bytes, aligned to that size and preceded by an unmapped guard of the same size:
//! index 0 is the kernel stack (TSS.RSP0, also the SYSCALL stack), 1–4 are the IST
//! stacks for NMI, #DF, #MC and #DB, and 5 is an application processor's idle stack.
//! The lowest word of every IST stack holds the
//! CPU's kernel GS base, for the paranoid entry.

use crate::layout::{self, PAGE_SIZE, STACK_SIZE};
use crate::paging::{self, PageSize};

/// Kernel code selector.
pub const KERNEL_CODE: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DATA: u16 = 0x10;
/// User data selector (RPL 3).
pub const USER_DATA: u16 = 0x18 | 3;
/// User 64-bit code selector (RPL 3).
pub const USER_CODE: u16 = 0x20 | 3;
/// TSS selector.
pub const TSS: u16 = 0x28;
/// LDT descriptor selector (loaded into LDTR only when an address space has an LDT).
pub const LDT: u16 = 0x38;

/// IST index (1-based, as in the IDT) of the NMI stack.
pub const IST_NMI: u8 = 1;
/// IST index of the double-fault stack.
pub const IST_DOUBLE_FAULT: u8 = 2;
/// IST index of the machine-check stack.
pub const IST_MACHINE_CHECK: u8 = 3;
/// IST index of the debug-exception stack.
pub const IST_DEBUG: u8 = 4;

/// The 64-bit task-state segment.
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
pub struct TaskStateSegment {
    reserved0: u32,
    /// Stack pointers for CPL 0–2.
    pub rsp: [u64; 3],
    reserved1: u64,
    /// Interrupt stack table, entries 1–7.
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap (past the limit = none).
    pub iomap_base: u16,
}

/// A CPU's descriptor tables.
#[repr(C, align(16))]
pub struct CpuTables {
    gdt: [u64; 9],
    tss: TaskStateSegment,
}

impl CpuTables {
    /// Empty tables (filled by [`load`]).
    pub const fn new() -> Self {
        Self {
            gdt: [0; 9],
            tss: TaskStateSegment {
                reserved0: 0,
                rsp: [0; 3],
                reserved1: 0,
                ist: [0; 7],
                reserved2: 0,
                reserved3: 0,
                iomap_base: core::mem::size_of::<TaskStateSegment>() as u16,
            },
        }
    }
}

impl CpuTables {
    /// Sets TSS.RSP0: where the CPU saves a user thread's state on an interrupt.
    pub fn set_kernel_entry_stack(&mut self, top: u64) {
        self.tss.rsp[0] = top;
    }

    /// Points the LDT descriptor ([`LDT`]) at 512 descriptors at virtual address `base`.
    pub fn set_ldt(&mut self, base: u64) {
        let limit = (keel_abi::object::LDT_ENTRIES * 8 - 1) as u64;
        self.gdt[7] =
            limit | ((base & 0xff_ffff) << 16) | (0x82 << 40) | (((base >> 24) & 0xff) << 56);
        self.gdt[8] = base >> 32;
    }
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}

/// Maps CPU `cpu`'s stacks (kernel, four IST, and the idle stack of an AP) and writes
/// `percpu` (its kernel GS base) into the lowest word of each IST stack. Returns the
/// kernel stack top. Runs on the bootstrap CPU for every CPU, before that CPU starts.
pub fn prepare_stacks(cpu: usize, percpu: u64) -> u64 {
    let pml4 = paging::kernel_pml4();
    for index in 0..layout::STACKS_PER_CPU {
        let bottom = layout::stack_bottom(cpu, index);
        for page in 0..STACK_SIZE / PAGE_SIZE {
            let frame = crate::memory::allocate_zeroed_frame();
            let flags = paging::WRITABLE | paging::NO_EXECUTE;
            paging::map(
                pml4,
                bottom + page * PAGE_SIZE,
                frame,
                flags,
                PageSize::Small,
            );
        }
        if (1..=4).contains(&index) {
            // SAFETY: the stack's first page was just mapped writable.
            unsafe { (bottom as *mut u64).write(percpu) };
        }
    }
    paging::map_espfix(cpu, crate::memory::allocate_zeroed_frame());
    layout::stack_bottom(cpu, 0) + STACK_SIZE
}

/// Top of stack `index` of `cpu`.
pub fn stack_top(cpu: usize, index: u64) -> u64 {
    layout::stack_bottom(cpu, index) + STACK_SIZE
}

/// Fills and loads this CPU's GDT and TSS (its per-CPU area must be installed and its
/// stacks prepared).
pub fn load(cpu: usize) {
    let percpu =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: the per-CPU area belongs to this CPU and nothing else touches its tables
    // (they are written once here, before they are loaded).
    let tables = unsafe { &mut (*percpu).tables };
    tables.tss.rsp[0] = stack_top(cpu, 0);
    for ist in 1..=4u64 {
        tables.tss.ist[ist as usize - 1] = stack_top(cpu, ist);
    }
    let tss = &raw const tables.tss as u64;
    let limit = (core::mem::size_of::<TaskStateSegment>() - 1) as u64;
    tables.gdt = [
        0,
        0x00af_9a00_0000_ffff, // kernel code, 64-bit
        0x00cf_9200_0000_ffff, // kernel data
        0x00cf_f200_0000_ffff, // user data
        0x00af_fa00_0000_ffff, // user code, 64-bit
        limit | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | (((tss >> 24) & 0xff) << 56),
        tss >> 32,
        0,
        0,
    ];
    // SAFETY: the stack top and the kernel stack region are mapped (prepare_stacks).
    unsafe {
        (*percpu).kernel_stack_top = stack_top(cpu, 0);
        (*percpu).espfix_frame = layout::espfix_frame(cpu);
    }
    let pointer = x86::dtables::DescriptorTablePointer::new(&tables.gdt);
    // SAFETY: the GDT is valid and lives forever in the per-CPU area; reloading the
    // segment registers with selectors of that GDT keeps execution going, and the TSS
    // descriptor is available (not busy) because it was just written.
    unsafe {
        x86::dtables::lgdt(&pointer);
        core::arch::asm!(
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {data:x}",
            "mov ds, {zero:x}",
            "mov es, {zero:x}",
            code = const KERNEL_CODE as u64,
            tmp = out(reg) _,
            data = in(reg) KERNEL_DATA as u64,
            zero = in(reg) 0u64,
        );
        x86::task::load_tr(x86::segmentation::SegmentSelector::from_raw(TSS));
    }
}
