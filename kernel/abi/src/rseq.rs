//! Keel's user restartable sequences: the per-thread area a thread registers with
//! TCBSetRseq and the critical-section descriptor it points to.
//!
//! This module owns the two layouts the kernel and user code share (there is no seL4
//! counterpart; the shapes follow Linux's rseq so existing algorithms carry over).
//! The area and every descriptor must be 32-byte-aligned blocks inside the frame that
//! holds the thread's IPC buffer (at the addresses that frame is mapped for the
//! buffer): the kernel reads and writes them through its own mapping of that frame,
//! never through a user pointer. A block outside it is ignored.
//!
//! The kernel writes the thread's CPU index into `cpu_id_start` and `cpu_id` at
//! registration and when the thread moves to another CPU. When a thread that left user
//! mode through an interrupt or exception stopped running on its CPU (preempted,
//! faulted, stalled for migration), its next return to user mode:
//! 1. rewrites the CPU index;
//! 2. if `critical_section` is non-zero and the thread's RIP lies in
//!    `start_ip .. start_ip + post_commit_offset` of that descriptor, sets RIP to
//!    `abort_ip`;
//! 3. clears `critical_section`.
//!
//! There is no abort signature (Linux checks one because its descriptors may live in
//! any memory; Keel's live in the thread's own IPC-buffer frame). A critical section
//! must not make system calls. A thread that is not registered sees none of this;
//! unregistered `cpu_id` reads [`CPU_ID_UNREGISTERED`] (user code initialises it).

/// Value of `cpu_id` before registration (Linux's RSEQ_CPU_ID_UNINITIALIZED).
pub const CPU_ID_UNREGISTERED: u32 = u32::MAX;
/// Required alignment of [`RseqArea`] and [`RseqCriticalSection`] in user memory.
pub const RSEQ_ALIGN: usize = 32;

/// The per-thread area registered with TCBSetRseq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct RseqArea {
    /// CPU index, written by the kernel; readable at any time (never "unregistered"
    /// once registered).
    pub cpu_id_start: u32,
    /// CPU index, written by the kernel; [`CPU_ID_UNREGISTERED`] before registration.
    pub cpu_id: u32,
    /// User address of the active [`RseqCriticalSection`], or 0. Set by user code on
    /// entry to a sequence; cleared by the kernel after it acts.
    pub critical_section: u64,
    /// Reserved, zero.
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Offset in the IPC-buffer page where the Keel runtime keeps a thread's area (after
/// the 1024-byte IPC buffer).
pub const RUNTIME_AREA_OFFSET: u64 = 0x800;
/// Offset in the IPC-buffer page of the runtime's first critical-section descriptor.
pub const RUNTIME_DESCRIPTORS_OFFSET: u64 = 0x820;

/// Describes one restartable sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct RseqCriticalSection {
    /// Layout version, 0.
    pub version: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// First instruction of the sequence.
    pub start_ip: u64,
    /// Bytes from `start_ip` to the instruction after the committing store.
    pub post_commit_offset: u64,
    /// Where the kernel restarts the thread; preceded by the 4-byte signature.
    pub abort_ip: u64,
}

const _: () = assert!(core::mem::size_of::<RseqArea>() == 32);
const _: () = assert!(core::mem::size_of::<RseqCriticalSection>() == 32);
const _: () = assert!(core::mem::align_of::<RseqArea>() == RSEQ_ALIGN);
