//! The kernel's virtual address space layout, and physical/virtual conversions.
//!
//! ```text
//! 0x0000_0000_0000_0000 .. 0x0000_7fff_ffff_ffff   user space (lower half)
//! 0xffff_8000_0000_0000 .. (+ top of RAM)           direct map of physical memory
//! 0xffff_fe00_0000_0000 .. 0xffff_fe7f_ffff_ffff    kernel stacks with guard pages
//! 0xffff_fe80_0000_0000 .. 0xffff_feff_ffff_ffff    espfix64 ministack aliases (slot 509)
//! 0xffff_ffff_8000_0000 .. (+ image size)           kernel image (KERNEL_BASE + phys)
//! ```

/// Virtual address of physical address 0 in the direct map (PML4 slot 256).
pub const DIRECT_MAP: u64 = 0xffff_8000_0000_0000;
/// Base of the region holding every kernel stack and IST stack (PML4 slot 508).
pub const KERNEL_STACKS: u64 = 0xffff_fe00_0000_0000;
/// Base of the espfix64 region (PML4 slot 509; bits 31:0 zero): CPU `c`'s ministack
/// page is mapped at `ESPFIX_BASE + c * 4 GiB + e * 64 KiB` for every `e` < 65536, so
/// an alias with any bits 31:16 exists (see [`espfix_frame`]).
pub const ESPFIX_BASE: u64 = 0xffff_fe80_0000_0000;
/// Virtual space of one CPU's espfix aliases.
pub const ESPFIX_CPU_SPAN: u64 = 1 << 32;
/// Offset in the ministack page of the 5-word IRET frame (the rest of the page, below
/// it, takes a fault on that IRETQ).
pub const ESPFIX_FRAME_OFFSET: u64 = PAGE_SIZE - 5 * 8;
/// Virtual address of physical address 0 in the kernel image mapping (PML4 slot 511).
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
/// First address above user space.
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// PML4 slots from this one up belong to the kernel and are shared by every address space.
pub const FIRST_KERNEL_PML4_SLOT: usize = 256;

/// Size of a small page.
pub const PAGE_SIZE: u64 = 4096;
/// Size of every kernel and IST stack; stacks are aligned to it (paranoid entry finds the
/// stack bottom by masking RSP).
pub const STACK_SIZE: u64 = 16 * 1024;
/// Virtual space each stack occupies: the stack plus an unmapped guard of the same size.
pub const STACK_SLOT: u64 = 2 * STACK_SIZE;
/// Stacks per CPU: the kernel stack (index 0), four IST stacks (1–4: NMI, #DF, #MC,
/// #DB) and the idle/boot stack of an application processor (5).
pub const STACKS_PER_CPU: u64 = 6;
/// Index of an application processor's idle stack.
pub const IDLE_STACK: u64 = 5;
/// Upper bound on CPUs the kernel starts.
pub const MAX_CPUS: usize = 64;

/// CPU `cpu`'s espfix IRET frame in the alias with bits 31:16 zero; the return path
/// ORs in the user's ESP[31:16].
pub const fn espfix_frame(cpu: usize) -> u64 {
    ESPFIX_BASE + cpu as u64 * ESPFIX_CPU_SPAN + ESPFIX_FRAME_OFFSET
}

/// Direct-map virtual address of a physical address.
pub const fn phys_to_virt(phys: u64) -> u64 {
    phys + DIRECT_MAP
}

/// Physical address of a direct-map virtual address.
pub const fn virt_to_phys(virt: u64) -> u64 {
    virt - DIRECT_MAP
}

/// Physical address of a kernel-image virtual address.
pub const fn image_virt_to_phys(virt: u64) -> u64 {
    virt - KERNEL_BASE
}

/// The lowest address of stack `index` (0 = kernel stack, 1.. = IST stacks) of `cpu`.
pub const fn stack_bottom(cpu: usize, index: u64) -> u64 {
    KERNEL_STACKS + (cpu as u64 * STACKS_PER_CPU + index) * STACK_SLOT + STACK_SIZE
}

/// Whether `addr` is a canonical x86-64 address (bits 63:47 all equal).
pub const fn is_canonical(addr: u64) -> bool {
    let top = (addr as i64) >> 47;
    top == 0 || top == -1
}
