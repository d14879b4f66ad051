//! The fault fast route: delivering a user exception or page fault to a handler that
//! already waits on the fault endpoint, and the handler's ReplyRecv that resumes the
//! faulted thread, each with a direct switch instead of the scheduler.
//!
//! Like the IPC fastpath ([`crate::fastpath`]) it is a list of checks followed by a
//! short transfer; a failed check changes nothing and the general path
//! (`Kernel::handle_user_exception`, `Kernel::handle_syscall`) takes over. Every case
//! it accepts ends in exactly the state the general path would produce (host tests in
//! `tests/faults.rs` compare the two): the same fault message (abi.md §10, seL4's
//! layouts), badge, reply capability, thread states, queues and current thread.
//!
//! It owns no state. Its invariants are the fastpath's: it reads capabilities through
//! [`crate::object::cap::raw`], resolves the fault-handler pointer only in a one-level
//! CSpace root, and switches only to a thread of this CPU, with an assigned address
//! space, when no ready thread has a higher priority and no scheduler decision is
//! pending. It takes user exceptions (label UserException: IP, SP, FLAGS, number,
//! code) and page faults (VMFault: IP, address, instruction fetch, FSR); capability,
//! unknown-system-call and debug faults always take the general path.

use core::num::NonZeroU64;

use keel_abi::message::{MSG_REGISTERS_IN_CPU, MessageInfo};

use crate::fault::label;
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Rights, raw};
use crate::object::endpoint::{self, Endpoint, Queue};
use crate::object::tcb::{self, Fault, ThreadState};

const WRITE: u8 = Rights::WRITE.0;
const GRANT: u8 = Rights::GRANT.0;
const GRANT_REPLY: u8 = Rights::GRANT_REPLY.0;

/// Vector of a page fault (#PF); #DB (1) and #BP (3) are debug faults.
const PAGE_FAULT: u64 = 14;
const DEBUG: u64 = 1;
const BREAKPOINT: u64 = 3;

impl<H: Hardware> Kernel<H> {
    /// Whether `t` may be switched to at once on CPU `here`: same CPU, no scheduler
    /// decision pending, no ready thread of higher priority, no user
    /// restartable-sequence fix-up pending, and an assigned address space (whose PML4
    /// [`Kernel::pml4_of`] then gives).
    #[inline(always)]
    fn fault_switch_target(&self, t: u64, here: usize) -> bool {
        let r = self.tcb(t);
        r.affinity as usize == here
            && !r.rseq_pending
            && !self.cpus[here].direct_switch_barred(r.priority)
            && raw::assigned_pml4(self.hw.read(tcb::slot(t, tcb::SLOT_VSPACE))).is_some()
    }

    /// Exception `vector` (error `code`, faulting `address` for a page fault) raised by
    /// the current thread of CPU `here`, on the fast route: the fault goes to the
    /// handler waiting on the thread's fault endpoint, which becomes current. Returns
    /// the handler, or `None` (nothing changed) to take the general path.
    pub fn faultpath_exception(
        &mut self,
        vector: u64,
        code: u64,
        address: u64,
        here: usize,
    ) -> Option<NonZeroU64> {
        let t = self.cpus[here].current;
        if t == 0 || vector == DEBUG || vector == BREAKPOINT || self.fastpath_limit == 0 {
            return None;
        }
        let (handler_cptr, root) = {
            let r = self.tcb(t);
            if !matches!(r.state, ThreadState::Running) {
                return None;
            }
            (r.fault_handler, tcb::slot(t, tcb::SLOT_CSPACE))
        };
        let root_words = [self.hw.read(root), self.hw.read(root + 8)];
        let slot = crate::fastpath::one_level_lookup(root_words, handler_cptr)?;
        let w0 = self.hw.read(slot);
        if !raw::endpoint_with(w0, WRITE) || raw::rights(w0) & (GRANT | GRANT_REPLY) == 0 {
            return None;
        }
        let ep = raw::address(w0);
        let handler = self.hw.get::<Endpoint>(ep).head;
        if handler == 0 {
            return None;
        }
        let ThreadState::BlockedOnReceive { can_grant, .. } = self.tcb(handler).state else {
            return None;
        };
        // (The handler's caller slot and the faulter's master reply capability are not
        // tested: `fast_give_reply`.)
        if !self.fault_switch_target(handler, here) {
            return None;
        }
        // Checks done: deliver.
        let badge = self.hw.read(slot + 8);
        let (rip, rsp, rflags) = {
            let c = &self.tcb(t).context;
            (c.rip, c.rsp, c.rflags)
        };
        let (fault, fault_label, words, length) = if vector == PAGE_FAULT {
            let instruction = code & 16 != 0;
            let fault = Fault::VmFault {
                address,
                fsr: code,
                instruction,
            };
            (
                fault,
                label::VM_FAULT,
                [rip, address, instruction as u64, code],
                4,
            )
        } else {
            let fault = Fault::UserException {
                number: vector,
                code,
            };
            (fault, label::USER_EXCEPTION, [rip, rsp, rflags, vector], 5)
        };
        {
            let r = self.tcb_mut(t);
            r.context.vector = vector;
            r.fault = fault;
            r.state = ThreadState::BlockedOnReply;
        }
        endpoint::remove(&mut self.hw, Queue::Endpoint(ep), handler);
        if length > MSG_REGISTERS_IN_CPU
            && let Some(buffer) = self.ipc_buffer(handler)
        {
            // UserException's fifth word, the error code (dropped without a buffer, as
            // on the general path).
            self.hw.write(
                buffer + crate::ipc::buffer::message(MSG_REGISTERS_IN_CPU),
                code,
            );
        }
        {
            let r = self.tcb_mut(handler);
            let c = &mut r.context;
            (c.r10, c.r8, c.r9, c.r15) = (words[0], words[1], words[2], words[3]);
            c.rsi = MessageInfo::new(fault_label, 0, 0, length as u64).to_word();
            c.rdi = badge;
            r.state = ThreadState::Running;
        }
        // The reply capability in the handler's caller slot (it grants iff the
        // handler's receive capability has the grant right, as in seL4).
        self.fast_give_reply(t, handler, can_grant);
        self.rseq_switched_out(t);
        self.cpus[here].current = handler;
        NonZeroU64::new(handler)
    }

    /// A ReplyRecv by `t` (current on CPU `here`) whose reply goes to a thread waiting
    /// for the reply to a fault, on the fast route. The IPC fastpath hands it over (out
    /// of line, so its own code keeps its registers) once its checks up to the caller's
    /// state passed: `t`'s receive capability, found through its lookup memo, names an
    /// endpoint with no sender queued, no bound notification is active, and its caller
    /// slot holds a reply capability to a thread blocked on the reply. The caller
    /// resumes with the registers the reply gives and becomes current; `t` waits on the
    /// endpoint. Returns the caller, or `None` (nothing changed) to take the general
    /// path.
    #[inline(never)]
    pub(crate) fn faultpath_reply_recv(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        let (cptr, info) = {
            let c = &self.tcb(t).context;
            (c.rdi, c.rsi)
        };
        let root = tcb::slot(t, tcb::SLOT_CSPACE);
        let root_words = [self.hw.read(root), self.hw.read(root + 8)];
        let memo = &self.tcb(t).lookup_cache;
        if memo.cptr != cptr || memo.root != root_words {
            return None;
        }
        let w0 = self.hw.read(memo.slot);
        let rights = raw::rights(w0);
        let ep = raw::address(w0);
        let (head, tail) = {
            let e = self.hw.get::<Endpoint>(ep);
            (e.head, e.tail)
        };
        let caller = raw::address(self.hw.read(tcb::slot(t, tcb::SLOT_CALLER)));
        let (fault, single_step, vector) = {
            let c = self.tcb(caller);
            (c.fault, c.debug.single_step, c.context.vector)
        };
        let reply = MessageInfo::from_word(info);
        let registers = match fault {
            // Resumes only with label 0 (else it stops: the general path).
            Fault::UserException { .. } if reply.label() == 0 => {
                Some((reply.length() as usize).min(3))
            }
            // Resumes whatever the label, re-executing the instruction (a page fault,
            // not a system call: no RIP rewind); the reply changes no register.
            Fault::VmFault { .. } if vector == PAGE_FAULT => None,
            _ => return None,
        };
        if !self.fault_switch_target(caller, here) {
            return None;
        }
        // Checks done: reply. The reply capability goes; the caller gets the registers.
        self.fast_take_reply(caller, t);
        let (r10, r8, r9) = {
            let c = &self.tcb(t).context;
            (c.r10, c.r8, c.r9)
        };
        {
            let r = self.tcb_mut(caller);
            r.fault = Fault::None;
            r.state = ThreadState::Running;
            if let Some(registers) = registers {
                // As `apply_fault_reply`: the registers the reply gives, then the
                // flags and bases made safe, and single-stepping kept on.
                let c = &mut r.context;
                if registers > 0 {
                    c.rip = r10;
                    if registers > 1 {
                        c.rsp = r8;
                        if registers > 2 {
                            c.rflags = r9;
                        }
                    }
                }
                c.sanitise_flags();
                c.sanitise_bases();
                if single_step {
                    c.rflags |= crate::object::tcb_debug::RFLAGS_TF;
                }
            }
        }
        self.fast_wait_on_endpoint(t, ep, rights & GRANT != 0, head, tail);
        self.cpus[here].current = caller;
        NonZeroU64::new(caller)
    }
}
