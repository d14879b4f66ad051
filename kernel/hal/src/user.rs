//! Ring 3: user address spaces loaded from ELF images, entering user mode, and coming
//! back when the program exits or faults.
//!
//! Until the object model (TCBs, scheduling) exists, a user program runs to completion
//! on the CPU that entered it: [`enter`] saves the kernel context, IRETs to the program,
//! and returns when the program calls the exit system call ([`exit_to_kernel`]) or
//! raises an exception. The kernel never dereferences user pointers: it reads user
//! memory by translating through the program's page tables and using the direct map
//! ([`copy_from_user`]).

use crate::layout::{self, PAGE_SIZE};
use crate::paging::{self, PageSize};
use crate::percpu::{OFFSET_KERNEL_STACK_TOP, OFFSET_RESUME_RSP};
use crate::trap::TrapFrame;

/// Top of the user stack (exclusive); one unmapped page above it.
pub const USER_STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
/// Size of the user stack; an unmapped guard page lies below it.
pub const USER_STACK_SIZE: u64 = 64 * 1024;
/// RFLAGS a user program starts with: IF and the reserved bit 1.
const USER_RFLAGS: u64 = 0x202;

/// How a user program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserExit {
    /// It called the exit system call with this value.
    Exited(u64),
    /// It raised an exception.
    Faulted {
        /// Exception vector.
        vector: u8,
        /// Error code.
        error_code: u64,
        /// Faulting instruction.
        rip: u64,
        /// CR2 for page faults.
        address: u64,
    },
}

/// A user program loaded into its own address space.
#[derive(Debug)]
pub struct UserProgram {
    /// Its PML4.
    pub pml4: u64,
    /// Entry point.
    pub entry: u64,
    /// Initial stack pointer.
    pub stack_top: u64,
}

/// Why a program could not be loaded.
pub type LoadError = keel_kern::elf::ElfError;

/// Loads `image` (an ELF executable) into a new address space with a stack.
pub fn load(image: &[u8]) -> Result<UserProgram, LoadError> {
    let plan = keel_kern::elf::plan(image)?;
    let pml4 = paging::new_user_space();
    for segment in plan.segments() {
        let first = segment.vaddr & !(PAGE_SIZE - 1);
        let end = segment.vaddr + segment.mem_size;
        let mut page = first;
        while page < end {
            let frame = match paging::translate(pml4, page) {
                Some(existing) => existing.phys,
                None => crate::memory::allocate_zeroed_frame(),
            };
            // Copy the part of the file that falls in this page.
            let file_start = segment.vaddr;
            let file_end = segment.vaddr + segment.file_size;
            let copy_start = page.max(file_start);
            let copy_end = (page + PAGE_SIZE).min(file_end);
            if copy_start < copy_end {
                let src = &image[(segment.file_offset + copy_start - file_start) as usize..]
                    [..(copy_end - copy_start) as usize];
                // SAFETY: `frame` is a frame of this new address space (freshly
                // allocated or mapped by an earlier segment), reached through the direct
                // map; the range stays inside it (copy_end <= page + PAGE_SIZE).
                unsafe {
                    let dst = layout::phys_to_virt(frame + (copy_start - page)) as *mut u8;
                    core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
                }
            }
            let mut flags = paging::USER;
            if segment.writable {
                flags |= paging::WRITABLE;
            }
            if !segment.executable {
                flags |= paging::NO_EXECUTE;
            }
            paging::map(pml4, page, frame, flags, PageSize::Small);
            page += PAGE_SIZE;
        }
    }
    let mut page = USER_STACK_TOP - USER_STACK_SIZE;
    while page < USER_STACK_TOP {
        let frame = crate::memory::allocate_zeroed_frame();
        paging::map(
            pml4,
            page,
            frame,
            paging::USER | paging::WRITABLE | paging::NO_EXECUTE,
            PageSize::Small,
        );
        page += PAGE_SIZE;
    }
    Ok(UserProgram {
        pml4,
        entry: plan.entry,
        stack_top: USER_STACK_TOP,
    })
}

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .global keel_user_enter
keel_user_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov gs:[{resume}], rsp
    mov rsp, gs:[{kernel_stack}]
    sub rsp, {frame_size}
    mov rsi, rdi
    mov rdi, rsp
    mov ecx, {frame_words}
    rep movsq
    jmp trap_return

    .global keel_user_resume
keel_user_resume:
    mov rsp, gs:[{resume}]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
"#,
    resume = const OFFSET_RESUME_RSP,
    kernel_stack = const OFFSET_KERNEL_STACK_TOP,
    frame_size = const core::mem::size_of::<TrapFrame>(),
    frame_words = const core::mem::size_of::<TrapFrame>() / 8,
);

unsafe extern "C" {
    fn keel_user_enter(frame: *const TrapFrame);
    fn keel_user_resume() -> !;
}

static EXITS: spin::Mutex<[Option<UserExit>; layout::MAX_CPUS]> =
    spin::Mutex::new([None; layout::MAX_CPUS]);

/// Runs `program` in ring 3 on this CPU with `argument` in RDI until it exits or
/// faults. Interrupts are enabled while it runs.
pub fn enter(program: &UserProgram, argument: u64) -> UserExit {
    let frame = TrapFrame {
        rip: program.entry,
        cs: crate::gdt::USER_CODE as u64,
        rflags: USER_RFLAGS,
        rsp: program.stack_top,
        ss: crate::gdt::USER_DATA as u64,
        rdi: argument,
        ..TrapFrame::default()
    };
    // SAFETY: the program's address space has the kernel half, so switching keeps us
    // running. `keel_user_enter` saves the callee-saved registers and RSP, IRETs to
    // ring 3 on the kernel stack (distinct from the stack we are on) and "returns" only
    // through `keel_user_resume`, which restores exactly what it saved.
    unsafe {
        paging::switch_to(program.pml4);
        keel_user_enter(&frame);
        paging::switch_to(paging::kernel_pml4());
    }
    EXITS.lock()[crate::percpu::cpu_index()]
        .take()
        .unwrap_or(UserExit::Exited(u64::MAX))
}

/// Ends the running user program and returns from [`enter`] on this CPU.
pub fn exit_to_kernel(exit: UserExit) -> ! {
    EXITS.lock()[crate::percpu::cpu_index()] = Some(exit);
    // SAFETY: a user program is running on this CPU (we are in its system call or
    // exception), so `enter` saved a resume context on this CPU's boot/idle stack,
    // which nothing has used since.
    unsafe { keel_user_resume() }
}

/// An exception raised in user mode: report it and end the program.
pub fn user_exception(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    let address = if vector == 14 { crate::trap::cr2() } else { 0 };
    log::warn!(
        "user exception {} at {:#x} (error code {:#x}, address {:#x})",
        crate::trap::exception_name(frame.vector),
        frame.rip,
        frame.error_code,
        address
    );
    exit_to_kernel(UserExit::Faulted {
        vector,
        error_code: frame.error_code,
        rip: frame.rip,
        address,
    })
}

/// Why a user buffer could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadAddress;

/// Copies `buffer.len()` bytes at user address `address` of the current address space
/// into `buffer`, through the page tables (every page must be present and user).
pub fn copy_from_user(address: u64, buffer: &mut [u8]) -> Result<(), BadAddress> {
    let pml4 = paging::current_pml4();
    let mut done = 0usize;
    while done < buffer.len() {
        let virt = address.checked_add(done as u64).ok_or(BadAddress)?;
        if virt >= layout::USER_END {
            return Err(BadAddress);
        }
        let t = paging::translate(pml4, virt)
            .filter(|t| t.user)
            .ok_or(BadAddress)?;
        let in_page = (PAGE_SIZE - (virt % PAGE_SIZE)) as usize;
        let n = in_page.min(buffer.len() - done);
        // SAFETY: `t.phys .. t.phys + n` lies in one present user frame, reached
        // through the direct map; the kernel only reads it.
        unsafe {
            core::ptr::copy_nonoverlapping(
                layout::phys_to_virt(t.phys) as *const u8,
                buffer[done..].as_mut_ptr(),
                n,
            )
        };
        done += n;
    }
    Ok(())
}

/// Frees a program's address space (it must not be running).
pub fn unload(program: UserProgram) {
    paging::destroy_user_space(program.pml4);
}
