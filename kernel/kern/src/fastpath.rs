//! The IPC fastpath: Call, ReplyRecv and Send (to a higher-priority receiver, or a
//! Signal to a higher-priority waiter) between threads that can switch directly.
//!
//! As in seL4, the fastpath is a list of checks, each of which falls back to the
//! general path (`Kernel::handle_syscall`) when it fails, followed by a short
//! straight-line transfer: the message (its length of message registers; in the long
//! variant also words 4 onwards, buffer to buffer; no capability transfer), the reply
//! capability set up or consumed in place, the woken thread made current without
//! running the scheduler (a Send's sender goes to the front of its ready queue). Every
//! case it accepts ends in exactly the state the general path would produce (host
//! tests compare the two); it reads capabilities through [`crate::object::cap::raw`]
//! instead of decoding them, resolves a capability pointer in one step when the CSpace
//! root resolves all 64 bits at once, and remembers each thread's last such lookup
//! ([`tcb::LookupCache`]).
//!
//! On success it returns the thread to run (the new current thread of CPU `here`; one
//! register, no result in memory), whose address space [`Kernel::pml4_of`] gives, so
//! the caller can leave the kernel without running the scheduler.

use core::num::NonZeroU64;

use keel_abi::message::{MSG_MAX_LENGTH, MSG_REGISTERS_IN_CPU, MessageInfo};

use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Rights, raw};
use crate::object::cspace;
use crate::object::endpoint::{self, Endpoint, Notification, Queue};
use crate::object::tcb::{self, Fault, Tcb, ThreadState};

/// [`Kernel::fastpath_limit`] while the fastpath is on: messages of at most
/// `MSG_MAX_LENGTH` words and no capabilities (the extra-caps and caps-unwrapped fields
/// lie just above the 7-bit length, so one compare of the low bits tests all three).
/// Words beyond the four message registers go buffer to buffer (both threads need an
/// IPC buffer then, else the general path truncates the message).
pub(crate) const FAST_LIMIT: u64 = MSG_MAX_LENGTH as u64 + 1;
/// [`Kernel::fastpath_short_limit`] while the fastpath is on: messages that fit the
/// message registers take the short variant of each fastpath.
pub(crate) const FAST_SHORT_LIMIT: u64 = MSG_REGISTERS_IN_CPU as u64 + 1;
const LENGTH_AND_CAPS: u64 = (1 << (MessageInfo::LABEL_SHIFT)) - 1;

/// The slot `cptr` names under the CSpace root capability `root` (its two words),
/// when that is a CNode resolving all 64 bits in one level (guard + radix = 64) and the
/// guard matches; `None` otherwise.
#[inline(always)]
pub(crate) fn one_level_lookup(root: [u64; 2], cptr: u64) -> Option<u64> {
    let (slots, radix, guard) = raw::one_level_cnode(root[0], root[1])?;
    // 1 <= radix <= 63 (guard size + radix = 64, both 6-bit fields).
    if cptr >> radix != guard {
        return None;
    }
    Some(slots + (cptr - (guard << radix)) * cspace::SLOT_BYTES)
}

const WRITE: u8 = Rights::WRITE.0;
const READ: u8 = Rights::READ.0;
const GRANT: u8 = Rights::GRANT.0;

impl<H: Hardware> Kernel<H> {
    /// Turns the fastpath on or off (off: every Call and ReplyRecv takes the general
    /// path, for measuring it).
    pub fn set_fastpath(&mut self, on: bool) {
        self.fastpath_limit = if on { FAST_LIMIT } else { 0 };
        self.fastpath_short_limit = if on { FAST_SHORT_LIMIT } else { 0 };
    }

    /// The slot `cptr` names in `t`'s CSpace, when the root CNode resolves all 64 bits in
    /// one level (guard + radix = 64) and the guard matches; `None` otherwise (the
    /// general path then decides). The thread's [`tcb::LookupCache`] answers a repeated
    /// lookup in the same CSpace root (three compares instead of the decoding).
    #[inline(always)]
    fn fast_lookup(&mut self, t: u64, cptr: u64) -> Option<u64> {
        let root = tcb::slot(t, tcb::SLOT_CSPACE);
        let words = [self.hw.read(root), self.hw.read(root + 8)];
        let cache = &self.tcb(t).lookup_cache;
        // Word by word (an array compare was compiled into an XOR/OR chain with more
        // instructions than three compare-and-branch pairs).
        if cache.cptr == cptr && cache.root[0] == words[0] && cache.root[1] == words[1] {
            return Some(cache.slot);
        }
        // (A thread's first Call through this pointer: laid out away from the hit.)
        core::hint::cold_path();
        let slot = one_level_lookup(words, cptr)?;
        self.tcb_mut(t).lookup_cache = tcb::LookupCache {
            root: words,
            cptr,
            slot,
        };
        Some(slot)
    }

    /// The PML4 `t` runs in, if `t` may be switched to at once on CPU `here`: same CPU,
    /// an assigned address space, and no ready thread of higher priority. (The caller
    /// of a fastpath that switched to `t` reads the PML4 again: [`Kernel::pml4_of`].)
    #[inline(always)]
    fn fast_switch_target(&self, t: u64, here: usize) -> Option<u64> {
        let r = self.tcb(t);
        if r.affinity as usize != here || self.cpus[here].direct_switch_barred(r.priority) {
            return None;
        }
        raw::assigned_pml4(self.hw.read(tcb::slot(t, tcb::SLOT_VSPACE)))
    }

    /// The PML4 of `t`'s address space, once a fastpath has switched to `t` (which it
    /// does only when `t`'s VSpace capability is an assigned PML4).
    #[inline(always)]
    pub fn pml4_of(&self, t: u64) -> u64 {
        raw::pml4_address(self.hw.read(tcb::slot(t, tcb::SLOT_VSPACE)))
    }

    /// For a message longer than the message registers, the IPC buffers (physical
    /// addresses) of `from` and `to`; `Some(None)` for a short message; `None` if a
    /// long message lacks a buffer on either side (the general path truncates it).
    /// `LONG` is the long-message variant of a fastpath (compiled separately, so the
    /// short one carries none of its code).
    #[inline(always)]
    fn fast_buffers<const LONG: bool>(&self, from: u64, to: u64) -> Option<Option<(u64, u64)>> {
        if !LONG {
            return Some(None);
        }
        Some(Some((self.ipc_buffer(from)?, self.ipc_buffer(to)?)))
    }

    /// The message-size test opening each fastpath. A short message (the registers
    /// only) goes on; in the short variant a long one (up to the limit, no
    /// capabilities) is handed to the long variant, `Err(true)`; anything else declines,
    /// `Err(false)`.
    #[inline(always)]
    fn fast_size<const LONG: bool>(&self, info: u64) -> Result<(), bool> {
        let size = info & LENGTH_AND_CAPS;
        if LONG || size < self.fastpath_short_limit {
            return Ok(());
        }
        Err(size < self.fastpath_limit)
    }

    /// Gives `receiver` (waiting to receive, so its caller slot is empty) a reply
    /// capability to `caller` (running, so its master reply capability has no child):
    /// invariants (invariants.rs, "reply capabilities"), so five stores and no test.
    /// Shared by the Call fastpath and the fault fast route.
    #[inline(always)]
    pub(crate) fn fast_give_reply(&mut self, caller: u64, receiver: u64, can_grant: bool) {
        cspace::insert_only_child(
            &mut self.hw,
            tcb::slot(caller, tcb::SLOT_REPLY),
            tcb::slot(receiver, tcb::SLOT_CALLER),
            raw::reply(caller, can_grant),
            0,
        );
    }

    /// Removes the reply capability to `caller` from `replier`'s caller slot: the only
    /// child of `caller`'s master and the end of its chain (invariants.rs, "reply
    /// capabilities"), so five stores. Shared by ReplyRecv and the fault reply route.
    #[inline(always)]
    pub(crate) fn fast_take_reply(&mut self, caller: u64, replier: u64) {
        cspace::remove_only_child(
            &mut self.hw,
            tcb::slot(caller, tcb::SLOT_REPLY),
            tcb::slot(replier, tcb::SLOT_CALLER),
        );
    }

    /// Makes `t` wait on endpoint `ep` (whose queue ends were `head` and `tail`),
    /// appended to its receive queue as the general path's ReplyRecv leaves it.
    #[inline(always)]
    pub(crate) fn fast_wait_on_endpoint(
        &mut self,
        t: u64,
        ep: u64,
        can_grant: bool,
        head: u64,
        tail: u64,
    ) {
        {
            let r = self.tcb_mut(t);
            r.state = ThreadState::BlockedOnReceive {
                endpoint: ep,
                can_grant,
            };
            r.wait_prev = tail;
            r.wait_next = 0;
        }
        if tail != 0 {
            self.tcb_mut(tail).wait_next = t;
        }
        let e = self.hw.get_mut::<Endpoint>(ep);
        if head == 0 {
            e.head = t;
        }
        e.tail = t;
    }

    /// Copies the message (its length: registers, then words 4.. buffer to buffer when
    /// `buffers` are given) and sets the badge and message info of `to`. Registers
    /// beyond the length are not part of the message: `to` keeps its own values there,
    /// as on the general path.
    #[inline(always)]
    fn fast_transfer(
        &mut self,
        from: u64,
        to: u64,
        badge: u64,
        info: u64,
        buffers: Option<(u64, u64)>,
    ) {
        let length = info & LENGTH_AND_CAPS;
        if let Some((from_buffer, to_buffer)) = buffers {
            for i in MSG_REGISTERS_IN_CPU..length as usize {
                let word = self.hw.read(from_buffer + crate::ipc::buffer::message(i));
                self.hw
                    .write(to_buffer + crate::ipc::buffer::message(i), word);
            }
        }
        let c = &self.tcb(from).context;
        let (r10, r8, r9, r15) = (c.r10, c.r8, c.r9, c.r15);
        let d = &mut self.tcb_mut(to).context;
        if length > 0 {
            d.r10 = r10;
            if length > 1 {
                d.r8 = r8;
                if length > 2 {
                    d.r9 = r9;
                    if length > 3 {
                        d.r15 = r15;
                    }
                }
            }
        }
        d.rdi = badge;
        // Label and length pass unchanged; no capabilities travel on the fastpath.
        d.rsi = info;
    }

    /// Call by `t`, the current thread of CPU `here`, on the fastpath; `None` means
    /// "take the general path" (nothing changed).
    #[inline(always)]
    pub fn fastpath_call(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        self.call_path::<false>(t, here)
    }

    /// The long-message variant of [`Self::fastpath_call`], out of line (a tail call
    /// from the short one, which carries none of its code).
    #[inline(never)]
    fn call_long(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        self.call_path::<true>(t, here)
    }

    #[inline(always)]
    fn call_path<const LONG: bool>(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        let (cptr, info) = {
            let c = &self.tcb(t).context;
            (c.rdi, c.rsi)
        };
        match self.fast_size::<LONG>(info) {
            Ok(()) => {}
            Err(true) => return self.call_long(t, here),
            Err(false) => return None,
        }
        let slot = self.fast_lookup(t, cptr)?;
        let w0 = self.hw.read(slot);
        if !raw::endpoint_to_call(w0) {
            return None;
        }
        let ep = raw::address(w0);
        let dest = self.hw.get::<Endpoint>(ep).head;
        if dest == 0 {
            return None;
        }
        let d: &Tcb = self.tcb(dest);
        // The reply capability's grant right is the receiver's (seL4 setupCallerCap).
        let ThreadState::BlockedOnReceive {
            can_grant: reply_grant,
            ..
        } = d.state
        else {
            return None;
        };
        let (dest_priority, next) = (d.priority, d.wait_next);
        if dest_priority < self.tcb(t).priority {
            return None;
        }
        self.fast_switch_target(dest, here)?;
        let buffers = self.fast_buffers::<LONG>(t, dest)?;
        // (The receiver's caller slot and the caller's master reply capability are
        // not tested: `fast_give_reply`.)
        // Checks done: perform. Dequeue the receiver (the head).
        {
            let e = self.hw.get_mut::<Endpoint>(ep);
            e.head = next;
            if next == 0 {
                e.tail = 0;
            }
        }
        if next != 0 {
            self.tcb_mut(next).wait_prev = 0;
        }
        let badge = self.hw.read(slot + 8);
        self.fast_transfer(t, dest, badge, info, buffers);
        {
            let d = self.tcb_mut(dest);
            d.wait_next = 0;
            d.state = ThreadState::Running;
        }
        self.fast_give_reply(t, dest, reply_grant);
        self.tcb_mut(t).state = ThreadState::BlockedOnReply;
        self.cpus[here].current = dest;
        NonZeroU64::new(dest)
    }

    /// Send by `t`, the current thread of CPU `here`, on the fastpath: to an endpoint
    /// whose queue head waits to receive, or (Signal) to a notification with a waiter,
    /// when the woken thread has a higher priority than `t` and can run here at once.
    /// It runs; `t` stays Running and goes to the front of its ready queue, as the
    /// general path's scheduler would put it (`schedule`'s SwitchTo). `None` means
    /// "take the general path" (nothing changed).
    #[inline(always)]
    pub fn fastpath_send(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        self.send_path::<false>(t, here)
    }

    /// The long-message variant of [`Self::fastpath_send`], out of line (a tail call
    /// from the short one, which carries none of its code).
    #[inline(never)]
    fn send_long(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        self.send_path::<true>(t, here)
    }

    #[inline(always)]
    fn send_path<const LONG: bool>(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        let (cptr, info, priority) = {
            let r = self.tcb(t);
            (r.context.rdi, r.context.rsi, r.priority)
        };
        match self.fast_size::<LONG>(info) {
            Ok(()) => {}
            Err(true) => return self.send_long(t, here),
            Err(false) => return None,
        }
        let slot = self.fast_lookup(t, cptr)?;
        let w0 = self.hw.read(slot);
        let object = raw::address(w0);
        let woken = if raw::endpoint_with(w0, WRITE) {
            let dest = self.hw.get::<Endpoint>(object).head;
            if dest == 0
                || !matches!(self.tcb(dest).state, ThreadState::BlockedOnReceive { .. })
                || self.tcb(dest).priority <= priority
            {
                return None;
            }
            dest
        } else if raw::notification_with(w0, WRITE) {
            // A thread in the queue waits on the notification (a bound thread waiting
            // on an endpoint is the general path's case: the queue is empty then).
            let waiter = self.hw.get::<Notification>(object).head;
            if waiter == 0 || self.tcb(waiter).priority <= priority {
                return None;
            }
            waiter
        } else {
            return None;
        };
        self.fast_switch_target(woken, here)?;
        let buffers = self.fast_buffers::<LONG>(t, woken)?;
        // Checks done: perform.
        let badge = self.hw.read(slot + 8);
        if raw::tag(w0) == raw::ENDPOINT {
            endpoint::remove(&mut self.hw, Queue::Endpoint(object), woken);
            self.fast_transfer(t, woken, badge, info, buffers);
        } else {
            endpoint::remove(&mut self.hw, Queue::Notification(object), woken);
            let c = &mut self.tcb_mut(woken).context;
            c.rdi = badge;
            c.rsi = 0;
        }
        self.tcb_mut(woken).state = ThreadState::Running;
        self.enqueue(t, true);
        self.rseq_switched_out(t);
        self.cpus[here].current = woken;
        NonZeroU64::new(woken)
    }

    /// ReplyRecv by `t`, the current thread of CPU `here`, on the fastpath; `None`
    /// means "take the general path" (nothing changed).
    #[inline(always)]
    pub fn fastpath_reply_recv(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        self.reply_recv_path::<false>(t, here)
    }

    /// The long-message variant of [`Self::fastpath_reply_recv`], out of line (a tail call
    /// from the short one, which carries none of its code).
    #[inline(never)]
    fn reply_recv_long(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        self.reply_recv_path::<true>(t, here)
    }

    #[inline(always)]
    fn reply_recv_path<const LONG: bool>(&mut self, t: u64, here: usize) -> Option<NonZeroU64> {
        let (cptr, info, bound) = {
            let r = self.tcb(t);
            (r.context.rdi, r.context.rsi, r.bound_notification)
        };
        match self.fast_size::<LONG>(info) {
            Ok(()) => {}
            Err(true) => return self.reply_recv_long(t, here),
            Err(false) => return None,
        }
        let slot = self.fast_lookup(t, cptr)?;
        let w0 = self.hw.read(slot);
        if !raw::endpoint_with(w0, READ) {
            return None;
        }
        let rights = raw::rights(w0);
        let ep = raw::address(w0);
        let (head, tail) = {
            let e = self.hw.get::<Endpoint>(ep);
            (e.head, e.tail)
        };
        if head != 0 && matches!(self.tcb(head).state, ThreadState::BlockedOnSend { .. }) {
            return None;
        }
        if bound != 0 && self.hw.get::<Notification>(bound).active() {
            return None;
        }
        let caller_slot = tcb::slot(t, tcb::SLOT_CALLER);
        // A caller slot holds nothing or a (non-master) reply capability, to a thread
        // that is BlockedOnReply: invariants (invariants.rs, "reply capabilities").
        let reply = self.hw.read(caller_slot);
        if reply == 0 {
            return None;
        }
        let caller = raw::address(reply);
        {
            let c = self.tcb(caller);
            if !matches!(c.fault, Fault::None) {
                // A reply to a fault: the fault fast route (faultpath.rs) or nothing.
                core::hint::cold_path();
                return self.faultpath_reply_recv(t, here);
            }
        }
        self.fast_switch_target(caller, here)?;
        let buffers = self.fast_buffers::<LONG>(t, caller)?;
        // Checks done: perform. The reply capability goes; the caller gets the message.
        self.fast_take_reply(caller, t);
        self.fast_transfer(t, caller, 0, info, buffers);
        self.tcb_mut(caller).state = ThreadState::Running;
        self.fast_wait_on_endpoint(t, ep, rights & GRANT != 0, head, tail);
        self.cpus[here].current = caller;
        NonZeroU64::new(caller)
    }
}
