//! Message passing: send, receive, call, reply, notifications, capability transfer and
//! fault delivery (seL4 non-MCS semantics).
//!
//! Message registers 0–3 travel in R10, R8, R9 and R15; the rest, the extra capability
//! pointers and the receive slot live in the thread's IPC buffer, which the kernel
//! reaches through the frame capability in the TCB's IPC-buffer slot (never through a
//! user pointer). A thread without an IPC buffer sends and receives only the four
//! register words.

use keel_abi::message::{MSG_MAX_LENGTH, MSG_REGISTERS_IN_CPU, MessageInfo};

use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Cap, Rights, raw};
use crate::object::cspace::{self, LookupFault};
use crate::object::endpoint::{self, Endpoint, Notification, Queue};
use crate::object::tcb::{self, Fault, ThreadState};

/// IPC buffer word offsets.
pub mod buffer {
    /// Word of message register `i` (i ≥ 0).
    pub const fn message(i: usize) -> u64 {
        8 * (1 + i as u64)
    }
    /// Word of extra capability (or unwrapped badge) `i`.
    pub const fn caps_or_badges(i: usize) -> u64 {
        8 * (122 + i as u64)
    }
    /// receiveCNode.
    pub const RECEIVE_CNODE: u64 = 8 * 125;
    /// receiveIndex.
    pub const RECEIVE_INDEX: u64 = 8 * 126;
    /// receiveDepth.
    pub const RECEIVE_DEPTH: u64 = 8 * 127;
}

impl<H: Hardware> Kernel<H> {
    /// Physical address of thread `t`'s IPC buffer, if it has a usable one.
    pub fn ipc_buffer(&self, t: u64) -> Option<u64> {
        let vaddr = self.tcb(t).ipc_buffer;
        let w0 = self.hw.read(tcb::slot(t, tcb::SLOT_IPC_BUFFER));
        crate::object::cap::raw::ram_frame(w0)
            .map(|(base, bits)| base + (vaddr & ((1 << bits) - 1)))
    }

    /// Message register `i` of thread `t` (`buffer` = its IPC buffer).
    pub fn message_register(&self, t: u64, buffer: Option<u64>, i: usize) -> u64 {
        if i < MSG_REGISTERS_IN_CPU {
            self.tcb(t).context.message_register(i)
        } else {
            buffer.map_or(0, |b| self.hw.read(b + buffer::message(i)))
        }
    }

    /// Sets message register `i` of thread `t`; returns false if it has no room.
    pub fn set_message_register(
        &mut self,
        t: u64,
        buffer: Option<u64>,
        i: usize,
        value: u64,
    ) -> bool {
        if i < MSG_REGISTERS_IN_CPU {
            self.tcb_mut(t).context.set_message_register(i, value);
            true
        } else if let Some(b) = buffer {
            self.hw.write(b + buffer::message(i), value);
            true
        } else {
            false
        }
    }

    /// Looks up `cptr` (all 64 bits) in thread `t`'s CSpace.
    #[inline(always)]
    pub fn lookup_slot(&self, t: u64, cptr: u64) -> Result<u64, LookupFault> {
        let root_slot = tcb::slot(t, tcb::SLOT_CSPACE);
        let words = [self.hw.read(root_slot), self.hw.read(root_slot + 8)];
        if let Some(slot) = crate::fastpath::one_level_lookup(words, cptr) {
            return Ok(slot);
        }
        let root = cspace::cap(&self.hw, root_slot);
        cspace::resolve(&self.hw, root, cptr, 64).map(|(slot, _)| slot)
    }

    /// Looks up `cptr` in `t`'s CSpace and returns the slot and its capability.
    #[inline(always)]
    pub fn lookup_cap(&self, t: u64, cptr: u64) -> Result<(u64, Cap), LookupFault> {
        let slot = self.lookup_slot(t, cptr)?;
        Ok((slot, cspace::cap(&self.hw, slot)))
    }

    /// Send on an endpoint (Send, NBSend, Call; also fault delivery).
    #[allow(clippy::too_many_arguments)]
    pub fn send_ipc(
        &mut self,
        sender: u64,
        endpoint: u64,
        badge: u64,
        blocking: bool,
        is_call: bool,
        can_grant: bool,
        can_grant_reply: bool,
    ) {
        let head = endpoint::head(&self.hw, Queue::Endpoint(endpoint));
        let receiving =
            head != 0 && matches!(self.tcb(head).state, ThreadState::BlockedOnReceive { .. });
        if !receiving {
            if blocking {
                self.set_state(
                    sender,
                    ThreadState::BlockedOnSend {
                        endpoint,
                        badge,
                        can_grant,
                        can_grant_reply,
                        is_call,
                    },
                );
                endpoint::append(&mut self.hw, Queue::Endpoint(endpoint), sender);
            }
            return;
        }
        let receiver = head;
        endpoint::remove(&mut self.hw, Queue::Endpoint(endpoint), receiver);
        let receiver_can_grant = matches!(
            self.tcb(receiver).state,
            ThreadState::BlockedOnReceive {
                can_grant: true,
                ..
            }
        );
        self.transfer(sender, receiver, endpoint, badge, can_grant);
        let has_fault = self.tcb(sender).fault != Fault::None;
        if is_call || has_fault {
            if (can_grant || can_grant_reply)
                && receiver_can_grant_reply(receiver_can_grant, can_grant, can_grant_reply)
            {
                // seL4: the reply capability may grant iff the receiver's endpoint
                // capability has the grant right.
                self.setup_caller_cap(sender, receiver, receiver_can_grant);
            } else {
                self.set_state(sender, ThreadState::Inactive);
            }
        }
        self.set_state(receiver, ThreadState::Running);
        self.possible_switch_to(receiver);
    }

    /// Receive on an endpoint (Recv, NBRecv, the receive half of ReplyRecv).
    pub fn receive_ipc(&mut self, receiver: u64, endpoint: u64, can_grant: bool, blocking: bool) {
        // A bound notification with a pending signal is delivered first.
        let bound = self.tcb(receiver).bound_notification;
        if bound != 0 && self.hw.get::<Notification>(bound).active() {
            self.complete_signal(bound, receiver);
            return;
        }
        let head = endpoint::head(&self.hw, Queue::Endpoint(endpoint));
        let sending =
            head != 0 && matches!(self.tcb(head).state, ThreadState::BlockedOnSend { .. });
        if !sending {
            if blocking {
                self.set_state(
                    receiver,
                    ThreadState::BlockedOnReceive {
                        endpoint,
                        can_grant,
                    },
                );
                endpoint::append(&mut self.hw, Queue::Endpoint(endpoint), receiver);
            } else {
                self.tcb_mut(receiver).context.rdi = 0; // NBRecv with nothing: badge 0
                self.tcb_mut(receiver).context.rsi = 0;
            }
            return;
        }
        let sender = head;
        let ThreadState::BlockedOnSend {
            badge,
            can_grant: sender_grant,
            can_grant_reply,
            is_call,
            ..
        } = self.tcb(sender).state
        else {
            return;
        };
        endpoint::remove(&mut self.hw, Queue::Endpoint(endpoint), sender);
        self.transfer(sender, receiver, endpoint, badge, sender_grant);
        let has_fault = self.tcb(sender).fault != Fault::None;
        if is_call || has_fault {
            if sender_grant || can_grant_reply {
                // The reply grants with the receiver's right, as in seL4.
                self.setup_caller_cap(sender, receiver, can_grant);
            } else {
                self.set_state(sender, ThreadState::Inactive);
            }
        } else {
            self.set_state(sender, ThreadState::Running);
            self.possible_switch_to(sender);
        }
    }

    /// Makes `receiver`'s caller slot hold a reply capability to `sender`, which then
    /// waits for the reply.
    fn setup_caller_cap(&mut self, sender: u64, receiver: u64, can_grant: bool) {
        self.set_state(sender, ThreadState::BlockedOnReply);
        let master = tcb::slot(sender, tcb::SLOT_REPLY);
        let caller = tcb::slot(receiver, tcb::SLOT_CALLER);
        if self.hw.read(caller) != 0 {
            self.delete_one(caller);
        }
        // A reply capability is neither revocable nor badged: a leaf after the master.
        cspace::insert_leaf(
            &mut self.hw,
            master,
            caller,
            crate::object::cap::raw::reply(sender, can_grant),
            0,
        );
    }

    /// Deletes thread `t`'s caller capability (before it receives again).
    pub fn delete_caller_cap(&mut self, t: u64) {
        let caller = tcb::slot(t, tcb::SLOT_CALLER);
        if !cspace::cap(&self.hw, caller).is_null() {
            self.delete_one(caller);
        }
    }

    /// Reply (through the reply capability in `reply_slot`) from `sender` to `receiver`.
    pub fn do_reply(&mut self, sender: u64, receiver: u64, reply_slot: u64, can_grant: bool) {
        // Deleting the (non-master) reply capability is unlinking it: it is a leaf of
        // the derivation tree (reply capabilities cannot be derived), never
        // first-badged, and never final (its master stays in the receiver's TCB), so
        // seL4's cteDeleteOne finalises nothing here.
        if self.tcb(receiver).state != ThreadState::BlockedOnReply {
            cspace::remove_leaf(&mut self.hw, reply_slot);
            return;
        }
        let fault = self.tcb(receiver).fault;
        cspace::remove_leaf(&mut self.hw, reply_slot);
        if fault == Fault::None {
            self.transfer(sender, receiver, 0, 0, can_grant);
            self.set_state(receiver, ThreadState::Running);
            self.possible_switch_to(receiver);
            return;
        }
        let resume = self.apply_fault_reply(sender, receiver, fault);
        self.tcb_mut(receiver).fault = Fault::None;
        if resume {
            let state = if matches!(
                fault,
                Fault::UnknownSyscall { .. } | Fault::UserException { .. }
            ) {
                ThreadState::Running
            } else {
                ThreadState::Restart
            };
            self.set_state(receiver, state);
            self.possible_switch_to(receiver);
        } else {
            self.set_state(receiver, ThreadState::Inactive);
        }
    }

    /// Copies a message (or a fault message, if `sender` has a pending fault) from
    /// `sender` to `receiver`, with the badge. `endpoint` is the endpoint it travels
    /// through (0 for replies), for unwrapping badged capabilities to it.
    #[inline(never)]
    fn transfer(&mut self, sender: u64, receiver: u64, endpoint: u64, badge: u64, can_grant: bool) {
        let receiver_buffer = self.ipc_buffer(receiver);
        let fault = self.tcb(sender).fault;
        if fault != Fault::None {
            let (label, len) = self.write_fault_message(sender, receiver, receiver_buffer, fault);
            let r = self.tcb_mut(receiver);
            r.context.rsi = MessageInfo::new(label, 0, 0, len as u64).to_word();
            r.context.rdi = badge;
            return;
        }
        let sender_buffer = self.ipc_buffer(sender);
        let info = MessageInfo::from_word(self.tcb(sender).context.rsi);
        let room = |b: Option<u64>| {
            if b.is_some() {
                MSG_MAX_LENGTH
            } else {
                MSG_REGISTERS_IN_CPU
            }
        };
        let length = (info.length() as usize)
            .min(room(sender_buffer))
            .min(room(receiver_buffer));
        for i in 0..length {
            let v = self.message_register(sender, sender_buffer, i);
            self.set_message_register(receiver, receiver_buffer, i, v);
        }
        let (extra, unwrapped) = if can_grant && info.extra_caps() > 0 {
            self.transfer_caps(
                sender,
                sender_buffer,
                receiver,
                receiver_buffer,
                endpoint,
                info.extra_caps() as usize,
            )
        } else {
            (0, 0)
        };
        let r = self.tcb_mut(receiver);
        r.context.rsi = MessageInfo::new(info.label(), unwrapped, extra, length as u64).to_word();
        r.context.rdi = badge;
    }

    /// Transfers up to `count` extra capabilities; returns (delivered, unwrapped mask).
    fn transfer_caps(
        &mut self,
        sender: u64,
        sender_buffer: Option<u64>,
        receiver: u64,
        receiver_buffer: Option<u64>,
        endpoint: u64,
        count: usize,
    ) -> (u64, u64) {
        let (Some(sb), Some(rb)) = (sender_buffer, receiver_buffer) else {
            return (0, 0);
        };
        let mut dest = self.receive_slot(receiver, rb);
        let mut delivered = 0;
        let mut unwrapped = 0;
        for i in 0..count.min(3) {
            let cptr = self.hw.read(sb + buffer::caps_or_badges(i));
            let Ok((slot, cap)) = self.lookup_cap(sender, cptr) else {
                break;
            };
            if cap.is_null() {
                break;
            }
            if let Cap::Endpoint { ptr, badge, .. } = cap
                && ptr == endpoint
                && endpoint != 0
            {
                self.hw.write(rb + buffer::caps_or_badges(i), badge);
                unwrapped |= 1 << i;
                delivered += 1;
                continue;
            }
            let Some(d) = dest else { break };
            let Some(derived) = crate::object::cnode::derive(self, slot, cap) else {
                break;
            };
            cspace::insert_child(&mut self.hw, slot, d, derived);
            dest = None;
            delivered += 1;
        }
        (delivered, unwrapped)
    }

    /// The empty slot a thread receives capabilities into, from its IPC buffer.
    fn receive_slot(&self, receiver: u64, buffer: u64) -> Option<u64> {
        let cnode_cptr = self.hw.read(buffer + buffer::RECEIVE_CNODE);
        let index = self.hw.read(buffer + buffer::RECEIVE_INDEX);
        let depth = self.hw.read(buffer + buffer::RECEIVE_DEPTH);
        let (_, root) = self.lookup_cap(receiver, cnode_cptr).ok()?;
        if depth == 0 || depth > 64 {
            return None;
        }
        let (slot, left) = cspace::resolve(&self.hw, root, index, depth as u32).ok()?;
        (left == 0 && cspace::cap(&self.hw, slot).is_null()).then_some(slot)
    }

    /// Signal a notification with `badge`.
    pub fn signal(&mut self, notification: u64, badge: u64) {
        let n = *self.hw.get::<Notification>(notification);
        let bound = n.bound();
        // (An active notification just accumulates badges, as in seL4.)
        if n.head == 0
            && !n.active()
            && bound != 0
            && matches!(self.tcb(bound).state, ThreadState::BlockedOnReceive { .. })
        {
            // The bound thread waits on an endpoint: wake it with the signal.
            if let ThreadState::BlockedOnReceive { endpoint, .. } = self.tcb(bound).state {
                endpoint::remove(&mut self.hw, Queue::Endpoint(endpoint), bound);
            }
            self.deliver_signal(bound, badge);
            return;
        }
        if n.head != 0 {
            let waiter = n.head;
            endpoint::remove(&mut self.hw, Queue::Notification(notification), waiter);
            self.deliver_signal(waiter, badge);
            return;
        }
        let n = self.hw.get_mut::<Notification>(notification);
        n.pending |= badge;
        n.set_active(true);
    }

    fn deliver_signal(&mut self, t: u64, badge: u64) {
        let r = self.tcb_mut(t);
        r.context.rdi = badge;
        r.context.rsi = 0;
        self.set_state(t, ThreadState::Running);
        self.possible_switch_to(t);
    }

    fn complete_signal(&mut self, notification: u64, t: u64) {
        let n = self.hw.get_mut::<Notification>(notification);
        let badge = n.pending;
        n.pending = 0;
        n.set_active(false);
        let r = self.tcb_mut(t);
        r.context.rdi = badge;
        r.context.rsi = 0;
    }

    /// Wait on (or poll) a notification.
    pub fn receive_signal(&mut self, t: u64, notification: u64, blocking: bool) {
        if self.hw.get::<Notification>(notification).active() {
            self.complete_signal(notification, t);
        } else if blocking {
            self.set_state(t, ThreadState::BlockedOnNotification { notification });
            endpoint::append(&mut self.hw, Queue::Notification(notification), t);
        } else {
            let r = self.tcb_mut(t);
            r.context.rdi = 0;
            r.context.rsi = 0;
        }
    }

    /// Takes a blocked thread out of whatever IPC it waits in; it will restart its
    /// system call when resumed (seL4 cancelIPC).
    pub fn cancel_ipc(&mut self, t: u64) {
        match self.tcb(t).state {
            ThreadState::BlockedOnSend { endpoint, .. }
            | ThreadState::BlockedOnReceive { endpoint, .. } => {
                endpoint::remove(&mut self.hw, Queue::Endpoint(endpoint), t);
                self.set_state(t, ThreadState::Inactive);
            }
            ThreadState::BlockedOnNotification { notification } => {
                endpoint::remove(&mut self.hw, Queue::Notification(notification), t);
                self.set_state(t, ThreadState::Inactive);
            }
            ThreadState::BlockedOnReply => {
                self.tcb_mut(t).fault = Fault::None;
                // Delete the reply capability that points at t, wherever it is: it is
                // the child of t's master reply capability.
                let master = tcb::slot(t, tcb::SLOT_REPLY);
                let child = cspace::next(&self.hw, master);
                if child != 0
                    && matches!(cspace::cap(&self.hw, child), Cap::Reply { tcb: x, master: false, .. } if x == t)
                {
                    self.delete_one(child);
                }
                self.set_state(t, ThreadState::Inactive);
            }
            _ => {}
        }
    }

    /// Takes waiter `t` off `queue`: it will restart its system call (what deleting
    /// the endpoint or notification, or cancelling its badged send, leaves it in).
    fn restart_waiter(&mut self, queue: Queue, t: u64) {
        endpoint::remove(&mut self.hw, queue, t);
        self.set_state(t, ThreadState::Restart);
        self.enqueue(t, false);
        self.reschedule_cpu_of(t);
    }

    /// Restarts every waiter of an endpoint or notification that is being finalised,
    /// always taking the head, so the queue itself is the progress. With
    /// `preemptible`, a preemption point follows each waiter; returns false if it
    /// stopped there (the waiters restarted so far have left the queue; the caller
    /// keeps the object alive behind a Zombie, so no thread can join the queue, and
    /// the redone deletion takes the rest from the head).
    pub fn restart_all_waiters(&mut self, queue: Queue, preemptible: bool) -> bool {
        loop {
            let t = endpoint::head(&self.hw, queue);
            if t == 0 {
                return true;
            }
            self.restart_waiter(queue, t);
            // (No stop once the queue is empty: the redone call would find nothing.)
            if preemptible && endpoint::head(&self.hw, queue) != 0 && self.preemption_point() {
                return false;
            }
        }
    }

    /// CancelBadgedSends: every sender with `badge` leaves the endpoint's queue and
    /// restarts its system call; the other waiters keep their places. A preemption
    /// point follows each thread restarted; returns false if it stopped there (the
    /// redone call walks the queue again from the head and goes on with the senders
    /// left: each stop has restarted at least one).
    pub fn cancel_badged_sends(&mut self, endpoint: u64, badge: u64) -> bool {
        let queue = Queue::Endpoint(endpoint);
        let mut t = endpoint::head(&self.hw, queue);
        while t != 0 {
            let next = self.tcb(t).wait_next;
            if matches!(self.tcb(t).state, ThreadState::BlockedOnSend { badge: b, .. } if b == badge)
            {
                self.restart_waiter(queue, t);
                if self.preemption_point() {
                    return false;
                }
            }
            t = next;
        }
        true
    }

    /// A notification is being finalised: its bound thread is unbound and no IRQ
    /// handler signals it any more (so nothing but its waiters still reaches it).
    pub fn detach_notification(&mut self, notification: u64) {
        let bound = self.hw.get::<Notification>(notification).bound();
        if bound != 0 {
            self.tcb_mut(bound).bound_notification = 0;
            self.hw.get_mut::<Notification>(notification).set_bound(0);
        }
        // IRQ handlers keep only the address: stop them signalling freed memory.
        for state in self.irqs.iter_mut() {
            if let crate::object::irq::IrqState::Signal {
                notification: n,
                badge,
                ..
            } = state
                && *n == notification
            {
                *n = 0;
                *badge = 0;
            }
        }
    }

    /// Thread `t` raised `fault`: send it to its fault handler, or stop the thread.
    pub fn handle_fault(&mut self, t: u64, fault: Fault) {
        self.tcb_mut(t).fault = fault;
        let handler = self.tcb(t).fault_handler;
        // The capability's words read in place (`raw`), not decoded: an endpoint
        // capability with write and grant or grant-reply.
        let (w0, badge) = match self.lookup_slot(t, handler) {
            Ok(slot) => (self.hw.read(slot), self.hw.read(slot + 8)),
            Err(_) => (0, 0),
        };
        let rights = raw::rights(w0);
        if raw::endpoint_with(w0, Rights::WRITE.0)
            && rights & (Rights::GRANT.0 | Rights::GRANT_REPLY.0) != 0
        {
            self.send_ipc(
                t,
                raw::address(w0),
                badge,
                true,
                true,
                rights & Rights::GRANT.0 != 0,
                rights & Rights::GRANT_REPLY.0 != 0,
            );
        } else {
            crate::fault::report_unhandled(self, t, fault);
            self.tcb_mut(t).fault = Fault::None;
            self.set_state(t, ThreadState::Inactive);
        }
    }

    /// Marker to keep `Endpoint` referenced for documentation links.
    #[doc(hidden)]
    pub fn _endpoint_size() -> usize {
        core::mem::size_of::<Endpoint>()
    }
}

fn receiver_can_grant_reply(
    _receiver_can_grant: bool,
    can_grant: bool,
    can_grant_reply: bool,
) -> bool {
    can_grant || can_grant_reply
}
