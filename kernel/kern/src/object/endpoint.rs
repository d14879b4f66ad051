//! Endpoints and notifications: the wait queues of synchronous IPC and signals.
//!
//! An endpoint (16 bytes) is a queue of threads all waiting to send or all waiting to
//! receive; which one follows from the first waiter's state. A notification (32 bytes)
//! holds a queue of waiters, a pending badge word with an "active" flag, and the
//! thread it is bound to. Queue links live in the TCBs (`wait_next`/`wait_prev`).
//!
//! An object being finalised keeps this layout: its deletion restarts the waiters from
//! the head, and while a stopped deletion waits to be redone its last capability is a
//! Zombie, so no thread joins the queue (see `object::cnode`). The objects carry no
//! "being deleted" flag, so the IPC fastpath checks nothing more.

use crate::memory::{Memory, Record};
use crate::object::tcb::{self, Tcb};

/// An endpoint object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoint {
    /// First waiting thread (TCB address, 0 = none).
    pub head: u64,
    /// Last waiting thread.
    pub tail: u64,
}
impl Record for Endpoint {}

/// A notification object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Notification {
    /// First waiting thread.
    pub head: u64,
    /// Last waiting thread.
    pub tail: u64,
    /// Badges signalled and not yet received (OR-ed together).
    pub pending: u64,
    /// Bit 63: active (a signal is pending); bits 0..52: the bound TCB (0 = none).
    pub active_and_bound: u64,
}
impl Record for Notification {}

const _: () = assert!(core::mem::size_of::<Endpoint>() <= 1 << super::ENDPOINT_BITS);
const _: () = assert!(core::mem::size_of::<Notification>() <= 1 << super::NOTIFICATION_BITS);

const ACTIVE: u64 = 1 << 63;

impl Notification {
    /// Whether a signal is pending.
    pub fn active(&self) -> bool {
        self.active_and_bound & ACTIVE != 0
    }
    /// The bound TCB (0 = none).
    pub fn bound(&self) -> u64 {
        self.active_and_bound & !ACTIVE
    }
    /// Sets the active flag.
    pub fn set_active(&mut self, active: bool) {
        self.active_and_bound = (self.active_and_bound & !ACTIVE) | if active { ACTIVE } else { 0 };
    }
    /// Sets the bound TCB.
    pub fn set_bound(&mut self, tcb: u64) {
        self.active_and_bound = (self.active_and_bound & ACTIVE) | tcb;
    }
}

/// Where a wait queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// The queue of the endpoint at this address.
    Endpoint(u64),
    /// The queue of the notification at this address.
    Notification(u64),
}

fn ends<M: Memory>(m: &M, q: Queue) -> (u64, u64) {
    match q {
        Queue::Endpoint(e) => {
            let ep = m.get::<Endpoint>(e);
            (ep.head, ep.tail)
        }
        Queue::Notification(n) => {
            let n = m.get::<Notification>(n);
            (n.head, n.tail)
        }
    }
}

fn set_ends<M: Memory>(m: &mut M, q: Queue, head: u64, tail: u64) {
    match q {
        Queue::Endpoint(e) => {
            let ep = m.get_mut::<Endpoint>(e);
            ep.head = head;
            ep.tail = tail;
        }
        Queue::Notification(n) => {
            let n = m.get_mut::<Notification>(n);
            n.head = head;
            n.tail = tail;
        }
    }
}

/// First waiter of a queue (0 = empty).
pub fn head<M: Memory>(m: &M, q: Queue) -> u64 {
    ends(m, q).0
}

/// Appends thread `t` to a queue.
pub fn append<M: Memory>(m: &mut M, q: Queue, t: u64) {
    let (head, tail) = ends(m, q);
    {
        let r = m.get_mut::<Tcb>(tcb::record(t));
        r.wait_prev = tail;
        r.wait_next = 0;
    }
    if tail != 0 {
        m.get_mut::<Tcb>(tcb::record(tail)).wait_next = t;
    }
    set_ends(m, q, if head == 0 { t } else { head }, t);
}

/// Removes thread `t` from a queue it is in.
pub fn remove<M: Memory>(m: &mut M, q: Queue, t: u64) {
    let (mut head, mut tail) = ends(m, q);
    let (prev, next) = {
        let r = m.get::<Tcb>(tcb::record(t));
        (r.wait_prev, r.wait_next)
    };
    if prev != 0 {
        m.get_mut::<Tcb>(tcb::record(prev)).wait_next = next;
    } else {
        head = next;
    }
    if next != 0 {
        m.get_mut::<Tcb>(tcb::record(next)).wait_prev = prev;
    } else {
        tail = prev;
    }
    let r = m.get_mut::<Tcb>(tcb::record(t));
    r.wait_prev = 0;
    r.wait_next = 0;
    set_ends(m, q, head, tail);
}
