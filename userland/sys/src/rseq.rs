//! User restartable sequences (`keel_abi::rseq`, issue 5): the calling thread's rseq
//! area and descriptors in its IPC-buffer page, registration, and the sequences the
//! runtime builds on.
//!
//! The area sits at [`RUNTIME_AREA_OFFSET`] of the page that holds the thread's IPC
//! buffer (the buffer takes the first 1024 bytes), the descriptor of [`percpu_add`] at
//! [`RUNTIME_DESCRIPTORS_OFFSET`]: the kernel reads both through that frame. A thread
//! registers once ([`register`]); from then on the kernel keeps `cpu_id` current and
//! aborts a [`percpu_add`] that was preempted, faulted or migrated in the middle, so a
//! plain load/add/store on a per-CPU slot is exact without a LOCK prefix.
//!
//! The sequence is assembly with a global label at every instruction boundary
//! ([`percpu_add_boundaries`]) so tests can stop a thread at each one.

use core::sync::atomic::AtomicU64;

use keel_abi::rseq::{CPU_ID_UNREGISTERED, RUNTIME_AREA_OFFSET, RUNTIME_DESCRIPTORS_OFFSET};

use crate::cap::{Cap, Tcb};
use crate::error::Result;

/// CPU slots a per-CPU array needs (the kernel's CPU limit).
pub const MAX_CPUS: usize = 64;

core::arch::global_asm!(
    r#"
    .text
    .balign 16
    /* rdi = area, rsi = descriptor (0: do not arm), rdx = slots, rcx = value;
       returns rax = aborts. The section is [start, end): a preemption, fault or
       migration inside it restarts at the abort label, which re-arms and retries. */
    .global keel_rseq_percpu_add
keel_rseq_percpu_add:
    xor eax, eax
1:
    mov qword ptr [rdi + 8], rsi
    .global keel_rseq_percpu_add_start
keel_rseq_percpu_add_start:
    mov r8d, dword ptr [rdi + 4]
    .global keel_rseq_percpu_add_1
keel_rseq_percpu_add_1:
    and r8d, 63
    .global keel_rseq_percpu_add_2
keel_rseq_percpu_add_2:
    mov r9, qword ptr [rdx + 8 * r8]
    .global keel_rseq_percpu_add_3
keel_rseq_percpu_add_3:
    add r9, rcx
    .global keel_rseq_percpu_add_commit
keel_rseq_percpu_add_commit:
    mov qword ptr [rdx + 8 * r8], r9
    .global keel_rseq_percpu_add_end
keel_rseq_percpu_add_end:
    ret
    .global keel_rseq_percpu_add_abort
keel_rseq_percpu_add_abort:
    inc rax
    jmp 1b
"#
);

unsafe extern "C" {
    fn keel_rseq_percpu_add(area: u64, descriptor: u64, slots: *const AtomicU64, value: u64)
    -> u64;
    static keel_rseq_percpu_add_start: u8;
    static keel_rseq_percpu_add_1: u8;
    static keel_rseq_percpu_add_2: u8;
    static keel_rseq_percpu_add_3: u8;
    static keel_rseq_percpu_add_commit: u8;
    static keel_rseq_percpu_add_end: u8;
    static keel_rseq_percpu_add_abort: u8;
}

/// Addresses of [`percpu_add`]'s instructions: the five inside the critical section
/// (the last is the committing store) and the first one after it.
pub fn percpu_add_boundaries() -> [u64; 6] {
    [
        (&raw const keel_rseq_percpu_add_start) as u64,
        (&raw const keel_rseq_percpu_add_1) as u64,
        (&raw const keel_rseq_percpu_add_2) as u64,
        (&raw const keel_rseq_percpu_add_3) as u64,
        (&raw const keel_rseq_percpu_add_commit) as u64,
        (&raw const keel_rseq_percpu_add_end) as u64,
    ]
}

fn page() -> u64 {
    let buffer = crate::ipc::buffer_address();
    assert!(buffer != 0, "rseq needs an IPC buffer");
    buffer & !0xfff
}

/// User address of the calling thread's area.
pub fn area_address() -> u64 {
    page() + RUNTIME_AREA_OFFSET
}

fn descriptor_address() -> u64 {
    page() + RUNTIME_DESCRIPTORS_OFFSET
}

/// Registers the calling thread's area with the kernel (`tcb` is the thread's own
/// TCB) after writing [`percpu_add`]'s descriptor next to it.
pub fn register(tcb: Cap<Tcb>) -> Result<()> {
    let area = area_address() as *mut u64;
    let descriptor = descriptor_address() as *mut u64;
    let [start, .., end] = percpu_add_boundaries();
    let abort = (&raw const keel_rseq_percpu_add_abort) as u64;
    // SAFETY: both blocks lie in the calling thread's IPC-buffer page, past the
    // 1024-byte buffer, which only the runtime uses; 32-byte aligned offsets.
    unsafe {
        area.write_volatile((CPU_ID_UNREGISTERED as u64) << 32 | CPU_ID_UNREGISTERED as u64);
        area.add(1).write_volatile(0);
        area.add(2).write_volatile(0);
        descriptor.add(1).write_volatile(0);
    }
    tcb.set_rseq(area as u64)?;
    // The descriptor's start address is also the "registered" mark (`try_percpu_add`),
    // so it is written last, once the kernel accepted the area.
    // SAFETY: as above.
    unsafe {
        descriptor.write_volatile(0);
        descriptor.add(2).write_volatile(end - start);
        descriptor.add(3).write_volatile(abort);
        descriptor.add(1).write_volatile(start);
    }
    Ok(())
}

/// Whether the calling thread registered its area through [`register`].
pub fn registered() -> bool {
    registered_at(page())
}

/// Whether the thread whose IPC-buffer page is `page` registered through [`register`]
/// (the descriptor's start address is written last).
#[inline(always)]
fn registered_at(page: u64) -> bool {
    // SAFETY: a word of the calling thread's IPC-buffer page (see `register`).
    let start = unsafe { ((page + RUNTIME_DESCRIPTORS_OFFSET + 8) as *const u64).read_volatile() };
    start == (&raw const keel_rseq_percpu_add_start) as u64
}

/// The CPU the calling thread runs on, as the kernel last wrote it
/// ([`CPU_ID_UNREGISTERED`] before [`register`]).
pub fn cpu_id() -> u32 {
    // SAFETY: a word of the calling thread's IPC-buffer page (see `register`).
    unsafe { ((area_address() + 4) as *const u32).read_volatile() }
}

/// Adds `value` to `slots[cpu]`, `cpu` being the CPU the calling thread runs on,
/// as a restartable sequence; returns how many times it was aborted and retried, or
/// `None` (nothing added) if the thread has not [`register`]ed.
#[inline]
pub fn try_percpu_add(slots: &[AtomicU64; MAX_CPUS], value: u64) -> Option<u64> {
    let page = page();
    if !registered_at(page) {
        return None;
    }
    // SAFETY: the area and descriptor are the calling thread's (registered); the
    // sequence writes only `slots[cpu_id & 63]`, an AtomicU64 (a plain aligned store is
    // atomic on x86-64), and clobbers only the registers declared by the C ABI.
    Some(unsafe {
        keel_rseq_percpu_add(
            page + RUNTIME_AREA_OFFSET,
            page + RUNTIME_DESCRIPTORS_OFFSET,
            slots.as_ptr(),
            value,
        )
    })
}

/// [`try_percpu_add`] for a thread that has [`register`]ed (panics otherwise).
pub fn percpu_add(slots: &[AtomicU64; MAX_CPUS], value: u64) -> u64 {
    try_percpu_add(slots, value).expect("rseq::percpu_add before rseq::register")
}

/// [`percpu_add`] without arming the section (the kernel never aborts it): a test's
/// control run.
pub fn percpu_add_unarmed(slots: &[AtomicU64; MAX_CPUS], value: u64) -> u64 {
    // SAFETY: as in `percpu_add`; descriptor 0 disarms.
    unsafe { keel_rseq_percpu_add(area_address(), 0, slots.as_ptr(), value) }
}
