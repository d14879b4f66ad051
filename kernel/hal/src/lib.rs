//! Keel's trusted core: everything in the kernel that needs `unsafe` or assembly.
//!
//! This crate owns the machine: the multiboot2 entry and the switch to long mode, page
//! tables, descriptor tables and trap stubs, per-CPU areas reached through GS, the
//! local APIC and timers, the other CPUs' start-up, the system-call entry and the
//! return to user mode, the boot heap and the serial/framebuffer console. It exposes
//! safe functions to the kernel glue (`kernel/src`) and to the safe object layer
//! (`keel-kern`), and each `unsafe` block carries a `// SAFETY:` comment saying why it
//! is sound.
//!
//! Invariants kept across the crate:
//! - Physical memory is reachable at [`layout::DIRECT_MAP`] + physical address.
//! - The kernel image is mapped at [`layout::KERNEL_BASE`] + physical address, with
//!   text read-execute, rodata read-only and data no-execute.
//! - Kernel code runs with interrupts disabled except where it explicitly waits
//!   ([`cpu::wait_for_interrupt`], the idle loop).
//! - GS base in kernel mode always points at the current CPU's [`percpu::PerCpu`].
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod acpi;
pub mod apic;
pub mod boot;
pub mod console;
pub mod cpu;
pub mod debug;
pub mod entry;
pub mod fpu;
pub mod gdt;
pub mod layout;
pub mod ldt;
pub mod machine;
pub mod memory;
pub mod paging;
pub mod percpu;
pub mod qemu;
pub mod rseq;
pub mod serial;
pub mod smp;
pub mod switches;
pub mod sync;
pub mod syscall;
pub mod testing;
pub mod time;
pub mod tlb;
pub mod trap;

/// Assembly text that pushes the 15 general registers in `UserContext` order (RAX
/// first, so R15 ends at the lowest address). The entry paths splice it into their
/// templates with `concat!`, so the order is written once.
#[macro_export]
#[doc(hidden)]
macro_rules! push_gprs {
    () => {
        "
    push rcx
    push r11
    push rax
    push rbx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r12
    push r13
    push r14
    push r15
"
    };
}

/// Assembly text that records a patch site (`switches`): `(switch, start, end)` in the
/// `.keel_patch` section, so that [`switches`] patches the block at `start` into a jump
/// to `end` when the switch is off. `switch` is the asm operand that holds its number.
#[macro_export]
#[doc(hidden)]
macro_rules! patch_site {
    ($switch:literal, $start:literal, $end:literal) => {
        concat!(
            "\n    .pushsection .keel_patch, \"a\"\n    .quad ",
            $switch,
            ", ",
            $start,
            ", ",
            $end,
            "\n    .popsection\n"
        )
    };
}

/// Assembly text that zeroes all 15 general registers (the SYSCALL entry's slow-check
/// path, `syscall.rs`).
#[macro_export]
#[doc(hidden)]
macro_rules! clear_gprs {
    () => {
        concat!(
            "
    xor eax, eax
    xor ecx, ecx
",
            $crate::clear_gprs_but_rax_rcx!()
        )
    };
}

/// [`clear_gprs!`] without RAX and RCX, for the SYSCALL entry's fast check, which
/// leaves them zero (they hold the OR of the null selectors).
#[macro_export]
#[doc(hidden)]
macro_rules! clear_gprs_but_rax_rcx {
    () => {
        "
    xor ebx, ebx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
"
    };
}

/// Assembly text that pops what [`push_gprs!`] pushed.
#[macro_export]
#[doc(hidden)]
macro_rules! pop_gprs {
    () => {
        concat!(
            $crate::pop_gprs_but_r11_rcx!(),
            "
    pop r11
    pop rcx
"
        )
    };
}

/// Assembly text that pops what [`push_gprs!`] pushed but the last two, R11 and RCX
/// (which lie next to the vector; the SYSRET exit skips them).
#[macro_export]
#[doc(hidden)]
macro_rules! pop_gprs_but_r11_rcx {
    () => {
        "
    pop r15
    pop r14
    pop r13
    pop r12
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rbx
    pop rax
"
    };
}

/// Declares the kernel's main function, called by the boot code on the bootstrap CPU
/// once the machine is set up: `hal::entry_point!(kernel_main);` with
/// `fn kernel_main(boot: &'static hal::boot::BootInfo) -> !`.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        #[allow(unsafe_code)]
        // SAFETY: the symbol name is unique in the kernel; hal::boot calls it once with
        // a fully initialised BootInfo.
        #[unsafe(export_name = "keel_kernel_main")]
        extern "Rust" fn __keel_kernel_main(boot: &'static $crate::boot::BootInfo) -> ! {
            let main: fn(&'static $crate::boot::BootInfo) -> ! = $main;
            main(boot)
        }
    };
}
