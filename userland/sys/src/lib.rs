//! Keel's raw system calls and program entry: the only userland code with `unsafe`.
//!
//! Register convention (seL4 x86-64): number in RDX, arguments in RDI, RSI, R10, R8,
//! R9, R15; results in RAX (Keel's debug calls) or the same registers. SYSCALL
//! clobbers RCX and R11.
#![no_std]

use keel_abi::syscall;

core::arch::global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    and rsp, -16
    xor ebp, ebp
    call keel_user_main
    mov rdi, rax
    mov rdx, {exit}
    syscall
    ud2
"#,
    exit = const syscall::DEBUG_THREAD_EXIT,
);

/// Declares the program's main function: `keel_sys::entry_point!(main)` with
/// `fn main(argument: u64) -> u64`; its return value is the program's exit value.
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

/// A system call with two arguments; returns RAX.
#[inline(always)]
pub fn syscall2(number: i64, a0: u64, a1: u64) -> u64 {
    let result: u64;
    // SAFETY: SYSCALL enters the kernel, which preserves every register except RAX (the
    // result), RCX and R11 (clobbered by the instruction); it touches no user memory
    // except through the buffers the arguments describe.
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
    syscall2(syscall::DEBUG_PUT_CHAR, byte as u64, 0);
}

/// Prints bytes on the kernel console; returns the count or an error value.
pub fn debug_put_string(bytes: &[u8]) -> u64 {
    syscall2(
        syscall::DEBUG_PUT_STRING,
        bytes.as_ptr() as u64,
        bytes.len() as u64,
    )
}

/// Prints bytes from an arbitrary address (for tests of the kernel's checks).
pub fn debug_put_raw(address: u64, length: u64) -> u64 {
    syscall2(syscall::DEBUG_PUT_STRING, address, length)
}

/// Ends the program with `value`.
pub fn debug_thread_exit(value: u64) -> ! {
    syscall2(syscall::DEBUG_THREAD_EXIT, value, 0);
    unreachable!("the kernel returned from thread exit")
}

/// Reports a test suite's counts to the kernel.
pub fn debug_test_report(passed: u32, failed: u32) {
    syscall2(syscall::DEBUG_TEST_REPORT, passed as u64, failed as u64);
}

/// Timer interrupts seen by this CPU.
pub fn debug_ticks() -> u64 {
    syscall2(syscall::DEBUG_TICKS, 0, 0)
}

/// An arbitrary system-call number (for tests of unknown numbers).
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

/// Makes an unknown system call with [`MARKS`] in RBX, R12–R15, R8, R9 and R10 and
/// returns what those registers hold afterwards (a test of the kernel's register
/// preservation).
pub fn syscall_with_marked_registers() -> [u64; 8] {
    let mut out = MARKS;
    // SAFETY: saves and restores RBX (reserved by LLVM) itself; every other register
    // it changes is declared; the system call number is unknown, so the kernel only
    // returns an error in RAX.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "mov rbx, [{p}]",
            "mov r12, [{p} + 8]",
            "mov r13, [{p} + 16]",
            "mov r14, [{p} + 24]",
            "mov r15, [{p} + 32]",
            "mov r8, [{p} + 40]",
            "mov r9, [{p} + 48]",
            "mov r10, [{p} + 56]",
            "push {p}",
            "mov rdx, -7",
            "syscall",
            "pop {p}",
            "mov [{p}], rbx",
            "mov [{p} + 8], r12",
            "mov [{p} + 16], r13",
            "mov [{p} + 24], r14",
            "mov [{p} + 32], r15",
            "mov [{p} + 40], r8",
            "mov [{p} + 48], r9",
            "mov [{p} + 56], r10",
            "pop rbx",
            p = in(reg) out.as_mut_ptr(),
            out("rax") _, out("rcx") _, out("rdx") _, out("r8") _, out("r9") _, out("r10") _,
            out("r11") _, out("r12") _, out("r13") _, out("r14") _, out("r15") _,
        );
    }
    out
}
