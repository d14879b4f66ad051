//! Instructions that fault on purpose, and raw memory access to user mappings: what
//! tests of fault delivery and of the address-space invocations need.
//!
//! Each faulting function executes one instruction of known length
//! ([`UD2_LENGTH`], …); a fault handler that replies with `FaultIP + length` lets the
//! thread continue after it. Writes are limited to the [`WINDOW`] of addresses where
//! no Rust object lives (the runtime and tests map frames there), so they cannot break
//! memory that Rust code owns; reads may go anywhere.

use core::ops::Range;

use keel_abi::object::USER_TOP;

/// Addresses [`write_u64`] accepts: 64 GiB up to the top of user space. The program
/// image, statics and stacks lie far below.
pub const WINDOW: Range<u64> = 0x10_0000_0000..USER_TOP;

/// Length of the UD2 instruction of [`ud2`].
pub const UD2_LENGTH: u64 = 2;
/// Length of the HLT instruction of [`hlt`].
pub const HLT_LENGTH: u64 = 1;
/// Length of the `div ecx` instruction of [`divide_by_zero`].
pub const DIV_LENGTH: u64 = 2;
/// Length of the SYSCALL instruction.
pub const SYSCALL_LENGTH: u64 = 2;

/// Executes UD2 (#UD, vector 6).
pub fn ud2() {
    // SAFETY: UD2 raises #UD; the kernel delivers a fault; if the handler resumes the
    // thread past the instruction, no register or memory has changed.
    unsafe { core::arch::asm!("ud2", options(nostack)) };
}

/// Executes HLT in ring 3 (#GP, vector 13, error code 0).
pub fn hlt() {
    // SAFETY: HLT is privileged: in ring 3 it raises #GP and changes nothing.
    unsafe { core::arch::asm!("hlt", options(nostack)) };
}

/// Divides by zero with `div ecx` (#DE, vector 0).
pub fn divide_by_zero() {
    // SAFETY: the division faults before writing EAX/EDX, which are declared clobbered
    // anyway; nothing else changes.
    unsafe {
        core::arch::asm!(
            "xor eax, eax",
            "xor edx, edx",
            "xor ecx, ecx",
            "div ecx",
            out("rax") _, out("rdx") _, out("rcx") _,
            options(nostack)
        )
    };
}

/// Reads the 8 bytes at `address` (any address: a fault goes to the fault handler,
/// which must map something there before it replies, or never reply).
pub fn read_u64(address: u64) -> u64 {
    let value: u64;
    // SAFETY: a read through inline assembly creates no reference and does not
    // overlap a Rust write (the compiler treats the block as reading memory).
    unsafe {
        core::arch::asm!("mov {v}, [{a}]", a = in(reg) address, v = lateout(reg) value,
            options(nostack, readonly, preserves_flags))
    };
    value
}

/// Writes 8 bytes at `address`, which must lie in [`WINDOW`] (panics otherwise).
pub fn write_u64(address: u64, value: u64) {
    assert!(
        WINDOW.contains(&address) && WINDOW.contains(&(address + 7)),
        "probe write outside the probe window"
    );
    // SAFETY: no Rust object lives in the window (see `WINDOW`), so the write cannot
    // alias memory Rust code owns; a fault goes to the fault handler.
    unsafe {
        core::arch::asm!("mov [{a}], {v}", a = in(reg) address, v = in(reg) value,
            options(nostack, preserves_flags))
    };
}

/// Jumps to `address` and expects to come back: for execute-never tests the fault
/// handler must move RIP to the return address on the stack (see
/// [`call_return_address`]). Returns normally if the code there is a `ret`.
pub fn call(address: u64) {
    // SAFETY: the callee either faults (the handler redirects RIP to our return
    // address and RSP past it) or is a plain `ret`; every caller-saved register is
    // declared clobbered, as for a call to unknown code.
    unsafe {
        core::arch::asm!(
            "call {a}",
            a = in(reg) address,
            clobber_abi("sysv64"),
        )
    };
}

/// For a thread stopped at the first instruction of the callee of [`call`]: the
/// return address is the word at RSP.
pub fn call_return_address(rsp: u64) -> u64 {
    read_u64(rsp)
}

/// Makes a system call with an unknown `number`, `rax` in RAX and [`crate::MARKS`]'
/// first value in RBX; returns (RAX, RBX) afterwards. A fault handler that emulates it
/// replies with the registers to give back and `FaultIP + 2`.
pub fn unknown_syscall(number: i64, rax: u64) -> (u64, u64) {
    let (out_rax, out_rbx): (u64, u64);
    // SAFETY: RBX is saved and restored around the call, and only explicit registers
    // carry values in and out (so none is allocated to RBX); every
    // register the fault reply may write back is declared clobbered or an output.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "mov rbx, rdi",
            "syscall",
            "mov rdi, rbx",
            "pop rbx",
            inlateout("rdi") crate::MARKS[0] => out_rbx,
            inlateout("rax") rax => out_rax,
            inlateout("rdx") number => _,
            lateout("rcx") _, lateout("r11") _, lateout("rsi") _,
            lateout("r8") _, lateout("r9") _, lateout("r10") _,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
        )
    };
    (out_rax, out_rbx)
}

/// Executes `in al, dx` on `port` directly (no capability): in ring 3 without an
/// I/O permission for the port this raises #GP (vector 13). Length [`IN_LENGTH`].
pub fn port_in8(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reads a port or faults; a port read changes no memory.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value,
            options(nostack, nomem, preserves_flags))
    };
    value
}

/// Length of the `in al, dx` instruction of [`port_in8`].
pub const IN_LENGTH: u64 = 1;

/// Writes the first byte of this function's own code with the value it already has
/// (a `nop`): where the program's text is mapped read-only, as init maps a server's,
/// this raises a write page fault at [`own_text_address`]; where it is writable, the
/// code does not change and the function returns.
pub fn write_own_text() {
    // SAFETY: the store writes the byte at label 2 with the value it holds (0x90, a
    // NOP that is never executed: the jump skips it), so even where the text is
    // writable no instruction changes; no Rust object lives in the text.
    unsafe {
        core::arch::asm!(
            "mov al, 0x90",
            "mov byte ptr [rip + 2f], al",
            "jmp 3f",
            "2: nop",
            "3:",
            out("al") _,
            options(nostack, preserves_flags)
        )
    };
}

/// An address inside the code of [`write_own_text`] (the fault address is in the same
/// page or the next).
pub fn own_text_address() -> u64 {
    write_own_text as *const () as u64
}
