//! User restartable sequences (`keel_abi::rseq`, issue 5): TCBSetRseq registration and
//! the fix-up on the way back to user mode.
//!
//! Owns `Tcb::rseq_area` (user address of the registered [`RseqArea`], 0 = none) and
//! `Tcb::rseq_pending` (the thread left user mode through a trap and then stopped
//! running on its CPU, or moved to another CPU: its next return to user mode must run
//! the fix-up).
//!
//! Invariants:
//! - The kernel touches the area and critical-section descriptors only through the
//!   frame capability in the thread's IPC-buffer slot, at the frame's direct-map
//!   address: never through a user pointer. An area or descriptor that is not a
//!   32-byte-aligned block inside that frame (the frame that holds the thread's IPC
//!   buffer, at the user addresses it is mapped for the buffer) is ignored.
//! - Only a thread that entered the kernel through a trap (interrupt or exception) can
//!   be inside a critical section when it stops: a system call inside a section is
//!   not supported (as in Linux), so threads in system calls only need their CPU
//!   number rewritten, which happens at once when they migrate.
//!
//! On a fix-up (the first return to user mode after the pending flag was set) the
//! kernel writes the thread's CPU into `cpu_id_start` and `cpu_id`, and if
//! `critical_section` names a descriptor whose `start_ip .. start_ip +
//! post_commit_offset` holds the thread's RIP, sets RIP to the descriptor's `abort_ip`;
//! then it clears `critical_section`. There is no abort signature: the descriptor lies
//! in the thread's own IPC-buffer frame, and moving a thread's RIP within its own
//! address space grants nothing it could not do itself.
//!
//! [`RseqArea`]: keel_abi::rseq::RseqArea

use keel_abi::error::Error;

use crate::invocation::InvocationError;
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::raw;
use crate::object::tcb::{self, SYSCALL_VECTOR};

/// Byte offsets in the area and a descriptor (`keel_abi::rseq`).
const AREA_CPU_ID_START: u64 = 0;
const AREA_CRITICAL_SECTION: u64 = 8;
const DESCRIPTOR_START_IP: u64 = 8;
const DESCRIPTOR_POST_COMMIT_OFFSET: u64 = 16;
const DESCRIPTOR_ABORT_IP: u64 = 24;
const ALIGN: u64 = keel_abi::rseq::RSEQ_ALIGN as u64;

impl<H: Hardware> Kernel<H> {
    /// Physical address of the 32-byte block at user address `vaddr` if it lies in the
    /// frame that holds thread `t`'s IPC buffer (and is aligned).
    fn rseq_block(&self, t: u64, vaddr: u64) -> Option<u64> {
        let (base, bits) = raw::ram_frame(self.hw.read(tcb::slot(t, tcb::SLOT_IPC_BUFFER)))?;
        let mask = (1u64 << bits) - 1;
        let buffer = self.tcb(t).ipc_buffer;
        if vaddr == 0 || !vaddr.is_multiple_of(ALIGN) || vaddr & !mask != buffer & !mask {
            return None;
        }
        Some(base + (vaddr & mask))
    }

    /// TCBSetRseq on thread `t`: registers the area at user address `area` (0
    /// unregisters) and writes the thread's CPU into it.
    pub(crate) fn set_rseq(&mut self, t: u64, area: u64) -> Result<(), InvocationError> {
        if area == 0 {
            let r = self.tcb_mut(t);
            r.rseq_area = 0;
            r.rseq_pending = false;
            return Ok(());
        }
        if !area.is_multiple_of(ALIGN) {
            return Err(InvocationError::simple(Error::AlignmentError));
        }
        if self.rseq_block(t, area).is_none() {
            return Err(InvocationError::argument(0));
        }
        self.tcb_mut(t).rseq_area = area;
        let cpu = self.tcb(t).affinity;
        self.rseq_write_cpu(t, cpu);
        Ok(())
    }

    /// Writes CPU `cpu` into thread `t`'s registered area (if it still lies in the
    /// thread's IPC-buffer frame).
    fn rseq_write_cpu(&mut self, t: u64, cpu: u16) {
        if let Some(block) = self.rseq_block(t, self.tcb(t).rseq_area) {
            // cpu_id_start and cpu_id are the two halves of the first word.
            let word = cpu as u64 | (cpu as u64) << 32;
            self.hw.write(block + AREA_CPU_ID_START, word);
        }
    }

    /// Thread `t` stops running on its CPU (another thread was chosen). If it left
    /// user mode through a trap it may be inside a critical section: its next return
    /// to user mode runs the fix-up.
    #[inline]
    pub(crate) fn rseq_switched_out(&mut self, t: u64) {
        let r = self.tcb_mut(t);
        if r.rseq_area != 0 && r.context.vector != SYSCALL_VECTOR {
            r.rseq_pending = true;
        }
    }

    /// Thread `t` now belongs to CPU `cpu`: its area says so at once, and a thread
    /// that was stopped in user mode gets the fix-up at its next return.
    pub(crate) fn rseq_migrated(&mut self, t: u64, cpu: u16) {
        if self.tcb(t).rseq_area == 0 {
            return;
        }
        self.rseq_write_cpu(t, cpu);
        self.rseq_switched_out(t);
    }

    /// Called for the thread about to return to user mode through the general path:
    /// runs the fix-up if one is pending.
    #[inline]
    pub fn rseq_resume(&mut self, t: u64) {
        if self.tcb(t).rseq_pending {
            self.rseq_fix_up(t);
        }
    }

    fn rseq_fix_up(&mut self, t: u64) {
        self.tcb_mut(t).rseq_pending = false;
        if !self.user_rseq {
            return;
        }
        let Some(area) = self.rseq_block(t, self.tcb(t).rseq_area) else {
            return;
        };
        let cpu = self.tcb(t).affinity;
        self.rseq_write_cpu(t, cpu);
        let section = self.hw.read(area + AREA_CRITICAL_SECTION);
        if section == 0 {
            return;
        }
        self.hw.write(area + AREA_CRITICAL_SECTION, 0);
        let Some(descriptor) = self.rseq_block(t, section) else {
            return;
        };
        let start = self.hw.read(descriptor + DESCRIPTOR_START_IP);
        let length = self.hw.read(descriptor + DESCRIPTOR_POST_COMMIT_OFFSET);
        let abort = self.hw.read(descriptor + DESCRIPTOR_ABORT_IP);
        let c = &mut self.tcb_mut(t).context;
        if c.rip.wrapping_sub(start) < length {
            // A non-user abort address faults when the thread is prepared to run.
            c.rip = abort;
        }
    }
}
