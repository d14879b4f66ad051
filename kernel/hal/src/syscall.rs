//! The SYSCALL entry and the SYSRET exit.
//!
//! Entry: SWAPGS, save the user RSP in the per-CPU area, switch to the CPU's kernel
//! stack, build a [`TrapFrame`] exactly like the trap stubs do (vector
//! [`trap::SYSCALL_MARKER`]) and call the kernel's handler (`keel_syscall`, defined by
//! the kernel with [`crate::syscall_handler!`]). Exit: restore the registers and
//! return with SYSRET. SYSRET is only reached with a canonical user RIP: the dispatcher
//! turns any other RIP into a user fault before returning, because SYSRET to a
//! non-canonical RIP raises #GP in ring 0 on Intel CPUs. (Register clearing and the
//! remaining SYSRET hazards are the entry-core work.)

use crate::gdt;
use crate::percpu::{OFFSET_KERNEL_STACK_TOP, OFFSET_USER_RSP};
use crate::trap::{self, TrapFrame};

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .global syscall_entry
syscall_entry:
    swapgs
    mov gs:[{user_rsp}], rsp
    mov rsp, gs:[{kernel_stack}]
    push {user_ss}
    push qword ptr gs:[{user_rsp}]
    push r11
    push {user_cs}
    push rcx
    push 0
    push {marker}
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call {dispatch}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    mov rcx, [rsp]
    mov r11, [rsp + 16]
    mov rsp, [rsp + 24]
    swapgs
    sysretq
"#,
    user_rsp = const OFFSET_USER_RSP,
    kernel_stack = const OFFSET_KERNEL_STACK_TOP,
    user_ss = const gdt::USER_DATA as u64,
    user_cs = const gdt::USER_CODE as u64,
    marker = const trap::SYSCALL_MARKER,
    dispatch = sym syscall_dispatch,
);

unsafe extern "C" {
    fn syscall_entry();
}

unsafe extern "Rust" {
    /// The kernel's system-call handler, defined with [`crate::syscall_handler!`].
    safe fn keel_syscall(frame: &mut TrapFrame);
}

/// Declares the kernel's system-call handler:
/// `hal::syscall_handler!(handle)` with `fn handle(frame: &mut hal::trap::TrapFrame)`.
#[macro_export]
macro_rules! syscall_handler {
    ($handler:path) => {
        #[allow(unsafe_code)]
        // SAFETY: the symbol name is unique in the kernel; hal::syscall calls it with
        // the frame of the current system call.
        #[unsafe(export_name = "keel_syscall")]
        extern "Rust" fn __keel_syscall(frame: &mut $crate::trap::TrapFrame) {
            let handler: fn(&mut $crate::trap::TrapFrame) = $handler;
            handler(frame)
        }
    };
}

/// RFLAGS bits cleared on SYSCALL entry: TF, IF, DF, IOPL, NT, AC.
const FLAGS_MASK: u64 = (1 << 8) | (1 << 9) | (1 << 10) | (3 << 12) | (1 << 14) | (1 << 18);

/// Programs this CPU's SYSCALL MSRs.
pub fn init_cpu() {
    use x86::msr::{IA32_EFER, IA32_FMASK, IA32_LSTAR, IA32_STAR, rdmsr, wrmsr};
    // SYSRET loads CS = base + 16 and SS = base + 8 (with RPL 3): base 0x10 gives the
    // user code 0x23 and user data 0x1b selectors of the GDT.
    let star = ((gdt::KERNEL_DATA as u64 | 3) << 48) | ((gdt::KERNEL_CODE as u64) << 32);
    // SAFETY: the entry point is the assembly above; the selectors match gdt::load.
    unsafe {
        wrmsr(IA32_EFER, rdmsr(IA32_EFER) | 1);
        wrmsr(IA32_STAR, star);
        wrmsr(IA32_LSTAR, syscall_entry as *const () as u64);
        wrmsr(IA32_FMASK, FLAGS_MASK);
    }
}

extern "C" fn syscall_dispatch(frame: &mut TrapFrame) {
    keel_syscall(frame);
    if frame.rip >= crate::layout::USER_END {
        // Returning there with SYSRET would fault in ring 0; report a #GP to the user.
        frame.vector = 13;
        frame.error_code = 0;
        crate::user::user_exception(frame);
    }
}
