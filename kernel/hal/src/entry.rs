//! Crossing between user threads and the kernel: the return path to user mode, the
//! idle loop, and the hand-off to the kernel's handlers.
//!
//! A thread's registers live in its TCB (`keel_kern::object::tcb::UserContext`). While
//! a thread runs, the per-CPU `context_top` and TSS.RSP0 point just past its 22 pushed
//! words, so SYSCALL and every trap from user mode save the registers straight into
//! the TCB; the handlers then run on the CPU's kernel stack. To run a thread the kernel
//! returns the address of its context, and [`keel_return_to_user`] pops it: with SYSRET
//! if the thread last entered through SYSCALL, else with IRETQ (which restores RCX and
//! R11 exactly). The kernel checks that RIP is a user address before either.
//!
//! The kernel's handlers are `extern "Rust"` functions the kernel image defines with
//! [`crate::kernel_entries!`]; they take the big kernel lock.

use crate::percpu::OFFSET_KERNEL_STACK_TOP;

/// Words of a context that the entry code pushes.
pub const PUSHED_WORDS: u64 = keel_kern::object::tcb::CONTEXT_PUSHED_WORDS as u64;
const VECTOR_OFFSET: u64 = 15 * 8;

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .global keel_return_to_user
keel_return_to_user:
    test rax, rax
    jz 5f
    mov rsp, rax
    cmp qword ptr [rsp + {vector}], {syscall_marker}
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
    je 4f
    add rsp, 16
    swapgs
    iretq
4:
    add rsp, 16
    mov rcx, [rsp]
    mov r11, [rsp + 16]
    mov rsp, [rsp + 24]
    swapgs
    sysretq
5:
    mov rsp, gs:[{kernel_stack}]
    call {idle}
    ud2
"#,
    vector = const VECTOR_OFFSET,
    syscall_marker = const keel_kern::object::tcb::SYSCALL_VECTOR,
    kernel_stack = const OFFSET_KERNEL_STACK_TOP,
    idle = sym idle,
);

unsafe extern "C" {
    /// Runs the thread whose context starts at RAX (a direct-map address), or the idle
    /// loop if RAX is 0. Never returns.
    fn keel_return_to_user() -> !;
}

/// Leaves the kernel: runs the thread whose context is at `context` (0 = idle).
pub fn resume(context: u64) -> ! {
    // SAFETY: `context` is 0 or the direct-map address of the current thread's context,
    // prepared by `prepare_thread` (RIP checked, CR3 and bases loaded); the return path
    // abandons the current kernel stack, which holds nothing live.
    unsafe {
        core::arch::asm!("jmp {}", sym keel_return_to_user, in("rax") context, options(noreturn))
    }
}

unsafe extern "Rust" {
    /// The kernel's system-call handler; returns the context to run (0 = idle).
    safe fn keel_entry_syscall() -> u64;
    /// The kernel's handler of a trap from user mode (exception or interrupt; vector,
    /// error code and fault address given); returns the context to run.
    safe fn keel_entry_user_trap(vector: u64, error_code: u64, fault_address: u64) -> u64;
    /// The kernel's handler of an interrupt that arrived while the CPU was idle.
    safe fn keel_entry_kernel_interrupt(vector: u64);
    /// The idle loop asks whether a thread is ready; returns its context or 0.
    safe fn keel_entry_idle_poll() -> u64;
}

/// Defines the kernel's entry handlers (see the functions this module declares).
#[macro_export]
macro_rules! kernel_entries {
    (syscall: $s:path, user_trap: $u:path, kernel_interrupt: $k:path, idle_poll: $i:path $(,)?) => {
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_syscall")]
        extern "Rust" fn __keel_entry_syscall() -> u64 {
            let f: fn() -> u64 = $s;
            f()
        }
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_user_trap")]
        extern "Rust" fn __keel_entry_user_trap(vector: u64, error_code: u64, address: u64) -> u64 {
            let f: fn(u64, u64, u64) -> u64 = $u;
            f(vector, error_code, address)
        }
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_kernel_interrupt")]
        extern "Rust" fn __keel_entry_kernel_interrupt(vector: u64) {
            let f: fn(u64) = $k;
            f(vector)
        }
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_idle_poll")]
        extern "Rust" fn __keel_entry_idle_poll() -> u64 {
            let f: fn() -> u64 = $i;
            f()
        }
    };
}

/// SYSCALL lands here (on the kernel stack, registers saved in the TCB).
pub(crate) extern "C" fn syscall_from_user() -> u64 {
    keel_entry_syscall()
}

/// A trap from user mode lands here (registers saved in the TCB).
pub(crate) extern "C" fn trap_from_user() -> u64 {
    let context = crate::percpu::current().context_top - PUSHED_WORDS * 8;
    // SAFETY: `context` is the current thread's context, just written by the entry code.
    let (vector, error_code) = unsafe {
        let words = context as *const u64;
        (words.add(15).read(), words.add(16).read())
    };
    let address = if vector == 14 { crate::trap::cr2() } else { 0 };
    crate::trap::acknowledge(vector);
    keel_entry_user_trap(vector, error_code, address)
}

/// An interrupt in kernel mode (only the idle loop runs with interrupts enabled).
pub(crate) fn interrupt_in_kernel(vector: u64) {
    crate::trap::acknowledge(vector);
    keel_entry_kernel_interrupt(vector);
}

/// The idle loop: wait for an interrupt, then ask the kernel for a thread.
extern "C" fn idle() -> ! {
    loop {
        let context = keel_entry_idle_poll();
        if context != 0 {
            resume(context);
        }
        crate::cpu::wait_for_interrupt();
    }
}

/// Enters the idle loop on this CPU's kernel stack (boot: after the kernel is set up).
pub fn enter_idle() -> ! {
    resume(0)
}

/// Prepares this CPU to run the thread whose context is at physical address
/// `context_phys`: its address space (`pml4`), FS/GS bases, and the entry stack
/// pointers. Returns the context's direct-map address for [`resume`].
pub fn prepare_thread(context_phys: u64, pml4: u64, fs_base: u64, gs_base: u64) -> u64 {
    let context = crate::layout::phys_to_virt(context_phys);
    if crate::paging::current_pml4() != pml4 {
        // SAFETY: the object layer gives the PML4 of the thread's VSpace, which has the
        // kernel half (copied at creation).
        unsafe { crate::paging::switch_to(pml4) };
    }
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: this CPU's own per-CPU area, interrupts disabled; the MSRs hold the user
    // FS base and (until SWAPGS on exit) the user GS base.
    unsafe {
        if (*area).loaded_fs_base != fs_base {
            x86::msr::wrmsr(x86::msr::IA32_FS_BASE, fs_base);
            (*area).loaded_fs_base = fs_base;
        }
        if (*area).loaded_gs_base != gs_base {
            x86::msr::wrmsr(x86::msr::IA32_KERNEL_GSBASE, gs_base);
            (*area).loaded_gs_base = gs_base;
        }
        let top = context + PUSHED_WORDS * 8;
        (*area).context_top = top;
        (*area).tables.set_kernel_entry_stack(top);
    }
    context
}
