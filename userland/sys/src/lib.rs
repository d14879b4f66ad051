//! Keel's user API: system calls, the IPC buffer, typed capabilities and boot info — the
//! only userland crate with `unsafe`.
//!
//! Layers, bottom up:
//! - [`syscall`]: the raw `syscall` instruction with seL4's x86-64 register convention
//!   (RDX number, RDI capability pointer in / badge out, RSI message info, message
//!   registers 0–3 in R10, R8, R9, R15; RCX and R11 clobbered), one function per call.
//! - [`ipc`]: the calling thread's IPC buffer (message registers 4 and up, extra
//!   capabilities or unwrapped badges, the receive slot), [`Message`] for building
//!   messages and [`Received`] for reading them.
//! - [`cap`]: [`Cap<T>`], a capability pointer typed by the object it names, with
//!   marker types for every object ([`cap::Endpoint`], [`cap::Tcb`], …).
//! - [`invocations`]: every kernel-object method as a method of the right `Cap<T>`,
//!   defined once in a table whose labels come from `keel_abi::invocation`; a
//!   wrong-type invocation does not compile. Failures are [`Error`]s with seL4's detail
//!   words.
//! - [`bootinfo`]: a safe reader of the boot-info frame the kernel hands the root task.
//! - [`thread`]: per-thread data (the IPC buffer pointer) and the stacks and start
//!   registers of threads created by the runtime.
//! - [`heap`]: the memory of a program's heap (a static region) and the step that hands
//!   it to the runtime's allocator.
//! - [`probe`]: instructions that fault on purpose and raw access to mappings, for
//!   tests of fault delivery and of the address-space invocations.
//!
//! Keel's own debug calls (console, exit, test report, ticks) stay here as free
//! functions. Every `unsafe` block says why it is sound in a `// SAFETY:` comment.
#![no_std]

pub mod bootinfo;
pub mod cap;
pub mod error;
pub mod fiber;
pub mod fpu;
pub mod hazards;
pub mod heap;
pub mod image;
pub mod invocations;
pub mod ipc;
pub mod probe;
pub mod rseq;
pub mod syscall;
pub mod thread;

pub use cap::{Cap, CapType};
pub use error::Error;
pub use invocations::VmAttributes;
pub use ipc::{Message, Received};
pub use keel_abi::message::{CapRights, MessageInfo};

use keel_abi::syscall as number;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    mov [rip + {boot_arg}], rdi
    mov [rip + {second_arg}], rsi
    test rdx, rdx
    jnz 2f
    lea rsp, [rip + {root_stack} + {stack_size}]
    jmp 3f
2:
    mov rsp, rdx
3:
    xor ebp, ebp
    call keel_user_main
    mov rdi, rax
    mov rdx, {exit}
    syscall
    ud2
"#,
    boot_arg = sym thread::BOOT_ARGUMENT,
    second_arg = sym thread::SECOND_ARGUMENT,
    root_stack = sym thread::ROOT_STACK,
    stack_size = const thread::STACK_SIZE,
    exit = const number::DEBUG_THREAD_EXIT,
);

/// Declares the program's main function: `keel_sys::entry_point!(main)` with
/// `fn main(argument: u64) -> u64`; its return value is the program's exit value.
///
/// `_start` moves the thread onto the runtime's root stack (so that per-thread data is
/// found as for every other thread, see [`thread`]) — or, when RDX is not 0, onto the
/// stack whose top RDX gives (a server program: init maps it, [`thread::STACK_SIZE`]
/// aligned, with unmapped guard pages) — and passes the kernel's RDI — the address of
/// the boot-info frame (a server program: its start word) — as `argument`.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        #[allow(unsafe_code)]
        // SAFETY: the one symbol `_start` calls; unique in the program.
        #[unsafe(export_name = "keel_user_main")]
        extern "C" fn __keel_user_main(argument: u64) -> u64 {
            let main: fn(u64) -> u64 = $main;
            main(argument)
        }
    };
}

/// A system call with two arguments in RDI and RSI; returns RAX (Keel's debug calls).
#[inline(always)]
pub fn syscall2(number: i64, a0: u64, a1: u64) -> u64 {
    let result: u64;
    // SAFETY: SYSCALL enters the kernel, which preserves every register except RAX (the
    // result), RCX and R11 (clobbered by the instruction); debug calls touch no user
    // memory except through the buffers the arguments describe.
    unsafe {
        core::arch::asm!(
            "syscall",
            in("rdx") number,
            in("rdi") a0,
            in("rsi") a1,
            lateout("rax") result,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    result
}

/// Prints one byte on the kernel console (seL4_DebugPutChar).
pub fn debug_put_char(byte: u8) {
    syscall2(number::DEBUG_PUT_CHAR, byte as u64, 0);
}

/// Prints bytes on the kernel console; returns the count or an error value.
pub fn debug_put_string(bytes: &[u8]) -> u64 {
    syscall2(
        number::DEBUG_PUT_STRING,
        bytes.as_ptr() as u64,
        bytes.len() as u64,
    )
}

/// Prints bytes from an arbitrary address (for tests of the kernel's checks).
pub fn debug_put_raw(address: u64, length: u64) -> u64 {
    syscall2(number::DEBUG_PUT_STRING, address, length)
}

/// Ends the program with `value` (the root task's exit; other threads should
/// suspend themselves instead).
pub fn debug_thread_exit(value: u64) -> ! {
    syscall2(number::DEBUG_THREAD_EXIT, value, 0);
    unreachable!("the kernel returned from thread exit")
}

/// Reports a test suite's counts to the kernel.
pub fn debug_test_report(passed: u32, failed: u32) {
    syscall2(number::DEBUG_TEST_REPORT, passed as u64, failed as u64);
}

/// Timer interrupts seen by this CPU.
pub fn debug_ticks() -> u64 {
    syscall2(number::DEBUG_TICKS, 0, 0)
}

/// Keel: switches the kernel's IPC fastpath on or off (benchmarks of the general path).
pub fn debug_set_fastpath(enabled: bool) {
    syscall2(number::DEBUG_SET_FASTPATH, enabled as u64, 0);
}

/// Keel: platform facts for benchmark reports (`keel_abi::syscall::PLATFORM_*` bits).
pub fn debug_platform_flags() -> u64 {
    syscall2(number::DEBUG_PLATFORM_FLAGS, 0, 0)
}

/// seL4_DebugCapIdentify: the kernel's type tag of the capability at `cptr`
/// (`keel_abi::object::cap_tag`), 0 for an empty slot.
pub fn debug_cap_identify(cptr: u64) -> u64 {
    let tag: u64;
    // SAFETY: DebugCapIdentify reads RDI and writes its result to RDI; RCX and R11 are
    // clobbered by SYSCALL; RAX may be written by Keel's debug dispatcher.
    unsafe {
        core::arch::asm!(
            "syscall",
            in("rdx") number::DEBUG_CAP_IDENTIFY,
            inlateout("rdi") cptr => tag,
            lateout("rax") _,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    tag
}

/// A system call with an arbitrary number and nothing else (for tests of unknown
/// numbers: under the object model this is an UnknownSyscall fault).
pub fn raw_syscall(number: i64) -> u64 {
    syscall2(number, 0, 0)
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is allowed in ring 3 (CR4.TSD clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Executes INT3 (a breakpoint exception).
pub fn breakpoint() {
    // SAFETY: INT3 only raises #BP, which the kernel handles.
    unsafe { core::arch::asm!("int3") };
}

/// Values [`syscall_with_marked_registers`] puts in RBX, R12–R15, R8, R9, R10.
pub const MARKS: [u64; 8] = [
    0x0101_0101_0101_0101,
    0x1212_1212_1212_1212,
    0x1313_1313_1313_1313,
    0x1414_1414_1414_1414,
    0x1515_1515_1515_1515,
    0x0808_0808_0808_0808,
    0x0909_0909_0909_0909,
    0x1010_1010_1010_1010,
];

/// Makes a Yield system call with [`MARKS`] in RBX, R12–R15, R8, R9 and R10 and
/// returns what those registers hold afterwards (a test of the kernel's register
/// preservation; Yield carries no message, so the kernel must leave them all).
pub fn syscall_with_marked_registers() -> [u64; 8] {
    let mut out = MARKS;
    // SAFETY: saves and restores RBX itself; the buffer pointer lives in RDI (saved on
    // the stack across the call), so it cannot be allocated to a marked register; every
    // other register it changes is declared; Yield only gives up the time slice.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "mov rbx, [rdi]",
            "mov r12, [rdi + 8]",
            "mov r13, [rdi + 16]",
            "mov r14, [rdi + 24]",
            "mov r15, [rdi + 32]",
            "mov r8, [rdi + 40]",
            "mov r9, [rdi + 48]",
            "mov r10, [rdi + 56]",
            "push rdi",
            "mov rdx, {yield_}",
            "syscall",
            "pop rdi",
            "mov [rdi], rbx",
            "mov [rdi + 8], r12",
            "mov [rdi + 16], r13",
            "mov [rdi + 24], r14",
            "mov [rdi + 32], r15",
            "mov [rdi + 40], r8",
            "mov [rdi + 48], r9",
            "mov [rdi + 56], r10",
            "pop rbx",
            yield_ = const number::YIELD,
            inout("rdi") out.as_mut_ptr() => _,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _,
            out("r8") _, out("r9") _, out("r10") _,
            out("r11") _, out("r12") _, out("r13") _, out("r14") _, out("r15") _,
        );
    }
    out
}

/// The CPU's brand string (CPUID leaves 0x8000_0002..=0x8000_0004), NUL-padded.
pub fn cpu_brand() -> [u8; 48] {
    let mut brand = [0u8; 48];
    let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max < 0x8000_0004 {
        return brand;
    }
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = core::arch::x86_64::__cpuid(leaf);
        for (j, word) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
            brand[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
    }
    brand
}
