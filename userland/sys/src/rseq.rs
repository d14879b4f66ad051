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

    /* Per-CPU free lists of indices: heads[cpu] = 1 + first free index (0: empty),
       next[i] = 1 + the index after i (0: end); r8 = next's length.
       push: rdi = area, rsi = descriptor, rdx = heads, rcx = next, r8 = length,
       r9 = index (< length, checked by the caller). The store into next[index] is the
       pusher's own node; the commit is the store into heads[cpu]. */
    .balign 16
    .global keel_rseq_percpu_push
keel_rseq_percpu_push:
    lea r11, [r9 + 1]
2:
    mov qword ptr [rdi + 8], rsi
    .global keel_rseq_percpu_push_start
keel_rseq_percpu_push_start:
    mov eax, dword ptr [rdi + 4]
    and eax, 63
    mov r10, qword ptr [rdx + 8 * rax]
    mov qword ptr [rcx + 8 * r9], r10
    mov qword ptr [rdx + 8 * rax], r11
    .global keel_rseq_percpu_push_end
keel_rseq_percpu_push_end:
    ret
    .global keel_rseq_percpu_push_abort
keel_rseq_percpu_push_abort:
    jmp 2b

    /* pop: rdi = area, rsi = descriptor, rdx = heads, rcx = next, r8 = length;
       returns rax = 1 + the index taken, or 0 (empty, or a head out of range). */
    .balign 16
    .global keel_rseq_percpu_pop
keel_rseq_percpu_pop:
3:
    mov qword ptr [rdi + 8], rsi
    .global keel_rseq_percpu_pop_start
keel_rseq_percpu_pop_start:
    mov r9d, dword ptr [rdi + 4]
    and r9d, 63
    mov rax, qword ptr [rdx + 8 * r9]
    test rax, rax
    jz keel_rseq_percpu_pop_end
    cmp rax, r8
    ja 4f
    mov r10, qword ptr [rcx + 8 * rax - 8]
    mov qword ptr [rdx + 8 * r9], r10
    .global keel_rseq_percpu_pop_end
keel_rseq_percpu_pop_end:
    ret
4:
    xor eax, eax
    ret
    .global keel_rseq_percpu_pop_abort
keel_rseq_percpu_pop_abort:
    jmp 3b
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
    fn keel_rseq_percpu_push(
        area: u64,
        descriptor: u64,
        heads: *const AtomicU64,
        next: *const AtomicU64,
        length: u64,
        index: u64,
    );
    static keel_rseq_percpu_push_start: u8;
    static keel_rseq_percpu_push_end: u8;
    static keel_rseq_percpu_push_abort: u8;
    fn keel_rseq_percpu_pop(
        area: u64,
        descriptor: u64,
        heads: *const AtomicU64,
        next: *const AtomicU64,
        length: u64,
    ) -> u64;
    static keel_rseq_percpu_pop_start: u8;
    static keel_rseq_percpu_pop_end: u8;
    static keel_rseq_percpu_pop_abort: u8;
}

/// Descriptor offsets (in the IPC-buffer page) of the three sequences.
const PUSH_DESCRIPTOR: u64 = RUNTIME_DESCRIPTORS_OFFSET + 32;
const POP_DESCRIPTOR: u64 = RUNTIME_DESCRIPTORS_OFFSET + 64;

/// Writes a descriptor: version/flags 0, start, post-commit offset, abort — the start
/// address last (for the add sequence it is the registration mark).
///
/// # Safety
/// `at` is a 32-byte block of the calling thread's IPC-buffer page past the buffer.
unsafe fn write_descriptor(at: u64, start: u64, end: u64, abort: u64) {
    let d = at as *mut u64;
    // SAFETY: as the caller promises.
    unsafe {
        d.write_volatile(0);
        d.add(2).write_volatile(end - start);
        d.add(3).write_volatile(abort);
        d.add(1).write_volatile(start);
    }
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
    let [start, .., end] = percpu_add_boundaries();
    // SAFETY: the area and the add descriptor lie in the calling thread's IPC-buffer
    // page, past the 1024-byte buffer, which only the runtime uses; 32-byte aligned.
    unsafe {
        area.write_volatile((CPU_ID_UNREGISTERED as u64) << 32 | CPU_ID_UNREGISTERED as u64);
        area.add(1).write_volatile(0);
        area.add(2).write_volatile(0);
        ((descriptor_address() + 8) as *mut u64).write_volatile(0);
    }
    tcb.set_rseq(area as u64)?;
    // The add descriptor's start address is also the "registered" mark
    // (`try_percpu_add`), so it is written last, once the kernel accepted the area
    // (`write_descriptor` writes the start address last).
    // SAFETY: three descriptor blocks of the page as above.
    unsafe {
        write_descriptor(
            page() + PUSH_DESCRIPTOR,
            (&raw const keel_rseq_percpu_push_start) as u64,
            (&raw const keel_rseq_percpu_push_end) as u64,
            (&raw const keel_rseq_percpu_push_abort) as u64,
        );
        write_descriptor(
            page() + POP_DESCRIPTOR,
            (&raw const keel_rseq_percpu_pop_start) as u64,
            (&raw const keel_rseq_percpu_pop_end) as u64,
            (&raw const keel_rseq_percpu_pop_abort) as u64,
        );
        write_descriptor(
            descriptor_address(),
            start,
            end,
            (&raw const keel_rseq_percpu_add_abort) as u64,
        );
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

/// Pushes `index` onto the calling CPU's free list (`heads` per CPU, `next` the links;
/// see `keel_rt::percpu::IndexPool`). The caller must have [`register`]ed; panics if
/// `index` is out of range.
pub fn percpu_push(heads: &[AtomicU64; MAX_CPUS], next: &[AtomicU64], index: usize) {
    assert!(index < next.len(), "index {index} out of range");
    let page = page();
    assert!(
        registered_at(page),
        "rseq::percpu_push before rseq::register"
    );
    // SAFETY: registered area and descriptor of the calling thread; the sequence
    // writes `next[index]` (in range, checked) and `heads[cpu_id & 63]`, both
    // AtomicU64 words, with plain aligned stores.
    unsafe {
        keel_rseq_percpu_push(
            page + RUNTIME_AREA_OFFSET,
            page + PUSH_DESCRIPTOR,
            heads.as_ptr(),
            next.as_ptr(),
            next.len() as u64,
            index as u64,
        )
    }
}

/// Pops an index from the calling CPU's free list; `None` if it is empty. The caller
/// must have [`register`]ed. A head beyond `next`'s length (only a caller storing into
/// the lists by hand makes one) reads as empty.
pub fn percpu_pop(heads: &[AtomicU64; MAX_CPUS], next: &[AtomicU64]) -> Option<usize> {
    let page = page();
    assert!(
        registered_at(page),
        "rseq::percpu_pop before rseq::register"
    );
    // SAFETY: as in `percpu_push`; the sequence reads `next[head - 1]` only after
    // checking 1 <= head <= next.len().
    let taken = unsafe {
        keel_rseq_percpu_pop(
            page + RUNTIME_AREA_OFFSET,
            page + POP_DESCRIPTOR,
            heads.as_ptr(),
            next.as_ptr(),
            next.len() as u64,
        )
    };
    taken.checked_sub(1).map(|i| i as usize)
}
