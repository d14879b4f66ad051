//! The IPC fastpath: Call and ReplyRecv between threads that can switch directly.
//!
//! As in seL4, the fastpath is a list of checks, each of which falls back to the
//! general path (`Kernel::handle_syscall`) when it fails, followed by a short
//! straight-line transfer: message registers 0–3 only (no IPC buffer, no capability
//! transfer), the reply capability set up or consumed in place, the woken thread made
//! current without touching the ready queues. Every case the fastpath accepts ends in
//! exactly the state the general path would produce.

use keel_abi::message::MessageInfo;

use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Cap, Rights};
use crate::object::cspace;
use crate::object::endpoint::{self, Endpoint, Notification, Queue};
use crate::object::tcb::{self, Fault, ThreadState};

/// Message info bits the fastpath cannot handle: any extra capability, more than four
/// message registers.
fn fast_message(info: u64) -> bool {
    let info = MessageInfo::from_word(info);
    info.extra_caps() == 0 && info.length() <= 4
}

impl<H: Hardware> Kernel<H> {
    /// Whether `t` may run on this CPU at once: same CPU, an assigned address space, and
    /// no ready thread of higher priority than `at_least` (its priority).
    fn can_switch_to(&self, t: u64, here: usize) -> bool {
        let r = self.tcb(t);
        if r.affinity as usize != here {
            return false;
        }
        if let Some(best) = self.cpus[here].highest_ready()
            && best > r.priority
        {
            return false;
        }
        matches!(
            cspace::cap(&self.hw, tcb::slot(t, tcb::SLOT_VSPACE)),
            Cap::Pml4 { asid: Some(_), .. }
        )
    }

    /// Copies message registers 0–3 and sets badge and message info of `to`.
    fn fast_transfer(&mut self, from: u64, to: u64, badge: u64, info: u64) {
        let c = self.tcb(from).context;
        let info = MessageInfo::from_word(info);
        let d = &mut self.tcb_mut(to).context;
        d.r10 = c.r10;
        d.r8 = c.r8;
        d.r9 = c.r9;
        d.r15 = c.r15;
        d.rdi = badge;
        d.rsi = MessageInfo::new(info.label(), 0, 0, info.length()).to_word();
    }

    /// Call on the fastpath; false means "take the general path" (nothing changed).
    pub fn fastpath_call(&mut self, t: u64) -> bool {
        let (cptr, info) = {
            let c = &self.tcb(t).context;
            (c.rdi, c.rsi)
        };
        if !fast_message(info) {
            return false;
        }
        let Ok((_, Cap::Endpoint { ptr, badge, rights })) = self.lookup_cap(t, cptr) else {
            return false;
        };
        if !rights.contains(Rights::WRITE) || !(rights.contains(Rights::GRANT) || rights.contains(Rights::GRANT_REPLY)) {
            return false;
        }
        let dest = self.hw.get::<Endpoint>(ptr).head;
        if dest == 0 {
            return false;
        }
        // The reply capability's grant right is the receiver's (seL4 setupCallerCap).
        let ThreadState::BlockedOnReceive { can_grant: reply_can_grant, .. } = self.tcb(dest).state else {
            return false;
        };
        let here = self.hw.current_cpu();
        if self.tcb(dest).priority < self.tcb(t).priority || !self.can_switch_to(dest, here) {
            return false;
        }
        let caller_slot = tcb::slot(dest, tcb::SLOT_CALLER);
        if !cspace::cap(&self.hw, caller_slot).is_null() {
            return false;
        }
        // Checks done: perform.
        endpoint::remove(&mut self.hw, Queue::Endpoint(ptr), dest);
        self.fast_transfer(t, dest, badge, info);
        cspace::insert_child(
            &mut self.hw,
            tcb::slot(t, tcb::SLOT_REPLY),
            caller_slot,
            Cap::Reply {
                tcb: t,
                master: false,
                can_grant: reply_can_grant,
            },
        );
        self.tcb_mut(t).state = ThreadState::BlockedOnReply;
        self.tcb_mut(dest).state = ThreadState::Running;
        self.cpus[here].current = dest;
        true
    }

    /// ReplyRecv on the fastpath; false means "take the general path" (nothing changed).
    pub fn fastpath_reply_recv(&mut self, t: u64) -> bool {
        let (cptr, info) = {
            let c = &self.tcb(t).context;
            (c.rdi, c.rsi)
        };
        if !fast_message(info) {
            return false;
        }
        let Ok((_, Cap::Endpoint { ptr, rights, .. })) = self.lookup_cap(t, cptr) else {
            return false;
        };
        if !rights.contains(Rights::READ) {
            return false;
        }
        let head = self.hw.get::<Endpoint>(ptr).head;
        if head != 0 && matches!(self.tcb(head).state, ThreadState::BlockedOnSend { .. }) {
            return false;
        }
        let bound = self.tcb(t).bound_notification;
        if bound != 0 && self.hw.get::<Notification>(bound).active() {
            return false;
        }
        let caller_slot = tcb::slot(t, tcb::SLOT_CALLER);
        let Cap::Reply {
            tcb: caller,
            master: false,
            ..
        } = cspace::cap(&self.hw, caller_slot)
        else {
            return false;
        };
        if self.tcb(caller).state != ThreadState::BlockedOnReply
            || self.tcb(caller).fault != Fault::None
        {
            return false;
        }
        let here = self.hw.current_cpu();
        if !self.can_switch_to(caller, here) {
            return false;
        }
        // Checks done: perform.
        cspace::remove(&mut self.hw, caller_slot);
        self.fast_transfer(t, caller, 0, info);
        self.tcb_mut(t).state = ThreadState::BlockedOnReceive {
            endpoint: ptr,
            can_grant: rights.contains(Rights::GRANT),
        };
        endpoint::append(&mut self.hw, Queue::Endpoint(ptr), t);
        self.tcb_mut(caller).state = ThreadState::Running;
        self.cpus[here].current = caller;
        true
    }
}
