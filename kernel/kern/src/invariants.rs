//! The invariant checker: a pure, read-only walk over the kernel's state that reports
//! the first broken invariant it finds.
//!
//! The host tests run it after every system call of a test world; the kernel runs it
//! after every system call when booted with `keel.check_invariants` (a debug and test
//! option: it allocates its working sets on the kernel heap and costs time
//! proportional to the capabilities it reaches).
//!
//! What it reaches: the slots of the CNodes and TCBs given as roots, of every thread
//! current on a CPU or in a ready queue, and, transitively, of every CNode, TCB, Zombie
//! and reply capability found in them; then every slot a derivation link names. What
//! it checks:
//! - **derivation tree**: empty slots are all zero; `prev`/`next` links agree and never
//!   name an empty slot; every full slot is on exactly one acyclic chain; a slot's
//!   descendants follow it contiguously (checked against the [`SUBTREE_WINDOW`]
//!   slots after its run, to keep the cost linear; for a badged endpoint or
//!   notification only up to the next first-badged capability with its badge, which
//!   starts a sibling's subtree);
//! - **untyped accounting**: a free index lies within its untyped; the objects of an
//!   untyped's children lie below its free index (a copy of the untyped excepted);
//!   distinct objects do not overlap, and one address holds one kind of object;
//! - **ready queues**: each queue's links agree, its threads are queued, runnable, of
//!   its priority and CPU and not current; the bitmap and its summary name exactly the
//!   non-empty queues; every queued thread is in one;
//! - **wait queues**: each endpoint's and notification's queue links agree, and its
//!   threads wait on it in the matching state (an endpoint's all sending or all
//!   receiving); a thread blocked on an endpoint or notification is in its queue; a
//!   thread not waiting has no wait links;
//! - **objects being finalised**: an endpoint or notification whose last capability
//!   is a Zombie (its waiters being restarted) has no other capability, and a
//!   notification's is unbound and signalled by no IRQ handler (so no thread can
//!   join its queue);
//! - **reply capabilities**: a thread's master reply capability has a child (the one
//!   reply capability to it, the end of the master's chain) only while the thread is
//!   BlockedOnReply; a caller slot holds nothing or a non-master reply capability; a
//!   thread BlockedOnReceive has an empty caller slot (the IPC fastpath and the fault
//!   fast route rely on all of these);
//! - this CPU's current thread is runnable.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::kernel::{Hardware, Kernel, NUM_PRIORITIES};
use crate::object::cap::{Cap, ZombieKind};
use crate::object::cspace;
use crate::object::endpoint::{self as ep, Queue};
use crate::object::tcb::{self, ThreadState};

/// Slots after the end of a capability's descendants checked for a stray descendant.
pub const SUBTREE_WINDOW: usize = 4;

/// Longest queue walked before the checker calls it a loop.
const MAX_QUEUE: usize = 1 << 20;

/// A broken invariant: what, and the addresses involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant.
    pub what: &'static str,
    /// The slot, thread or object it was found at.
    pub at: u64,
    /// A second address involved (0 if none).
    pub other: u64,
    /// For a derivation-tree violation, the capabilities in the two slots.
    pub caps: Option<(crate::object::cap::Cap, crate::object::cap::Cap)>,
}

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} (at {:#x}, {:#x})", self.what, self.at, self.other)?;
        if let Some((a, b)) = self.caps {
            write!(f, ": {a:?}, {b:?}")?;
        }
        Ok(())
    }
}

fn fail<T>(what: &'static str, at: u64, other: u64) -> Result<T, Violation> {
    Err(Violation {
        what,
        at,
        other,
        caps: None,
    })
}

macro_rules! ensure {
    ($cond:expr, $what:expr, $at:expr, $other:expr) => {
        if !$cond {
            return fail($what, $at, $other);
        }
    };
}

/// The slot arrays a capability leads to (base, slot count), and the thread it names.
fn reaches(cap: Cap) -> (Option<(u64, u64)>, u64) {
    match cap {
        Cap::CNode { ptr, radix, .. } => (Some((ptr, 1 << radix)), 0),
        Cap::Tcb { ptr } => (Some((ptr, tcb::TCB_SLOTS)), ptr),
        Cap::Zombie {
            ptr,
            kind: ZombieKind::Tcb,
            ..
        } => (Some((ptr, tcb::TCB_SLOTS)), 0),
        Cap::Zombie {
            ptr,
            kind: ZombieKind::CNode { radix },
            ..
        } => (Some((ptr, 1 << radix)), 0),
        Cap::Reply { tcb, .. } => (Some((tcb, tcb::TCB_SLOTS)), tcb),
        _ => (None, 0),
    }
}

impl<H: Hardware> Kernel<H> {
    /// The check the kernel runs after a system call with `keel.check_invariants[=N]`
    /// (from [`Kernel::invariant_root`] while that TCB lives, after every
    /// [`Kernel::invariant_every`]-th call; nothing when the root is 0).
    pub fn check_invariants_after_syscall(&mut self) -> Result<(), Violation> {
        let root = self.invariant_root;
        if root == 0 {
            return Ok(());
        }
        self.invariant_countdown += 1;
        if self.invariant_countdown < self.invariant_every {
            return Ok(());
        }
        self.invariant_countdown = 0;
        if self.hw.exists::<tcb::Tcb>(tcb::record(root)) {
            self.check_invariants(&[(root, tcb::TCB_SLOTS)])
        } else {
            self.check_invariants(&[])
        }
    }

    /// Checks the kernel's invariants over everything reachable from `roots` (slot
    /// arrays: base, number of slots) and the scheduled threads (module docs).
    pub fn check_invariants(&self, roots: &[(u64, u64)]) -> Result<(), Violation> {
        let hw = &self.hw;
        // Threads the scheduler knows: current and ready.
        let mut threads = BTreeSet::new();
        for state in self.cpus.iter() {
            if state.current != 0 {
                threads.insert(state.current);
            }
            for prio in 0..NUM_PRIORITIES {
                let mut t = state.ready_head(prio as u8);
                let mut n = 0;
                while t != 0 && n < MAX_QUEUE {
                    threads.insert(t);
                    t = self.tcb(t).ready_next;
                    n += 1;
                }
            }
        }
        // Every slot reachable from the roots and those threads.
        let mut work: Vec<(u64, u64)> = roots.to_vec();
        work.extend(threads.iter().map(|&t| (t, tcb::TCB_SLOTS)));
        let mut seen = BTreeSet::new();
        let mut full = Vec::new();
        let mut endpoints = BTreeSet::new();
        let mut notifications = BTreeSet::new();
        let mut dying = Vec::new();
        while let Some((base, count)) = work.pop() {
            if !seen.insert(base) {
                continue;
            }
            for i in 0..count {
                let s = base + i * cspace::SLOT_BYTES;
                let c = cspace::cap(hw, s);
                if c.is_null() {
                    for w in 0..4 {
                        ensure!(hw.read(s + 8 * w) == 0, "empty slot has a word set", s, w);
                    }
                    continue;
                }
                full.push(s);
                let (slots, thread) = reaches(c);
                if let Some(array) = slots {
                    work.push(array);
                }
                if thread != 0 && threads.insert(thread) {
                    work.push((thread, tcb::TCB_SLOTS));
                }
                match c {
                    Cap::Endpoint { ptr, .. } => {
                        endpoints.insert(ptr);
                    }
                    Cap::Notification { ptr, .. } => {
                        notifications.insert(ptr);
                    }
                    Cap::Zombie {
                        ptr,
                        kind: ZombieKind::Endpoint,
                        ..
                    } => dying.push((Queue::Endpoint(ptr), s)),
                    Cap::Zombie {
                        ptr,
                        kind: ZombieKind::Notification,
                        ..
                    } => dying.push((Queue::Notification(ptr), s)),
                    _ => {}
                }
            }
        }
        // Slots only the derivation links name.
        full.sort_unstable();
        full.dedup();
        let mut frontier = full.clone();
        while !frontier.is_empty() {
            let mut found = Vec::new();
            for &s in &frontier {
                for l in [cspace::prev(hw, s), cspace::next(hw, s)] {
                    if l != 0 && !cspace::cap(hw, l).is_null() && full.binary_search(&l).is_err() {
                        found.push(l);
                    }
                }
            }
            found.sort_unstable();
            found.dedup();
            full.extend_from_slice(&found);
            full.sort_unstable();
            frontier = found;
        }
        self.check_links(&full)?;
        let chains = self.check_chains(&full)?;
        self.check_untypeds(&chains)?;
        self.check_ready_queues(&threads)?;
        self.check_dying_queues(&dying, &endpoints, &notifications)?;
        for &(q, _) in &dying {
            match q {
                Queue::Endpoint(e) => endpoints.insert(e),
                Queue::Notification(n) => notifications.insert(n),
            };
        }
        self.check_wait_queues(&threads, &endpoints, &notifications)?;
        self.check_runnable_findable(&threads)?;
        self.check_reply_links(&threads)?;
        let here = self.hw.current_cpu();
        let cur = self.cpus[here].current;
        ensure!(
            cur == 0 || self.tcb(cur).state.is_runnable(),
            "this CPU's current thread is not runnable",
            cur,
            here as u64
        );
        Ok(())
    }

    fn check_links(&self, full: &[u64]) -> Result<(), Violation> {
        let hw = &self.hw;
        for &s in full {
            let (p, n) = (cspace::prev(hw, s), cspace::next(hw, s));
            ensure!(p != s && n != s, "slot linked to itself", s, 0);
            if p != 0 {
                ensure!(
                    cspace::next(hw, p) == s,
                    "next(prev(slot)) is not the slot",
                    s,
                    p
                );
                ensure!(
                    !cspace::cap(hw, p).is_null(),
                    "slot linked to an empty one",
                    s,
                    p
                );
            }
            if n != 0 {
                ensure!(
                    cspace::prev(hw, n) == s,
                    "prev(next(slot)) is not the slot",
                    s,
                    n
                );
                ensure!(
                    !cspace::cap(hw, n).is_null(),
                    "slot linked to an empty one",
                    s,
                    n
                );
            }
        }
        Ok(())
    }

    /// The derivation chains (from their heads); checks they are acyclic, cover every
    /// full slot and keep subtrees contiguous.
    fn check_chains(&self, full: &[u64]) -> Result<Vec<Vec<u64>>, Violation> {
        let hw = &self.hw;
        // `full` is sorted: a slot's index in it marks it visited.
        let mut visited = alloc::vec![false; full.len()];
        let mut count = 0;
        let mut chains = Vec::new();
        for &s in full {
            if cspace::prev(hw, s) != 0 {
                continue;
            }
            let mut chain = Vec::new();
            let mut x = s;
            while x != 0 {
                let Ok(k) = full.binary_search(&x) else {
                    return fail("chain through a slot not found", x, s);
                };
                ensure!(!visited[k], "slot linked twice", x, s);
                visited[k] = true;
                count += 1;
                chain.push(x);
                x = cspace::next(hw, x);
            }
            chains.push(chain);
        }
        if count != full.len() {
            let on_cycle = visited.iter().position(|v| !v).map_or(0, |k| full[k]);
            return fail("slot on a derivation cycle", on_cycle, 0);
        }
        for chain in &chains {
            for (i, &s) in chain.iter().enumerate() {
                let mut j = i + 1;
                while j < chain.len() && cspace::is_parent_of(hw, s, chain[j]) {
                    j += 1;
                }
                let end = (j + SUBTREE_WINDOW).min(chain.len());
                let parent = cspace::cap(hw, s);
                let badge = parent.badge();
                for &z in &chain[j..end] {
                    // A badged endpoint or notification is a parent of every later
                    // non-first-badged copy with its badge, by the capabilities alone;
                    // a first-badged one with that badge starts a sibling's subtree,
                    // and the copies after it are that sibling's (seL4's tree is the
                    // same: its descendants are only the run right after a slot).
                    let candidate = cspace::cap(hw, z);
                    if badge != 0
                        && cspace::first_badged(hw, z)
                        && candidate.badge() == badge
                        && candidate.object() == parent.object()
                    {
                        break;
                    }
                    if cspace::is_parent_of(hw, s, z) {
                        return Err(Violation {
                            what: "a child outside its parent's subtree run",
                            at: z,
                            other: s,
                            caps: Some((cspace::cap(hw, z), cspace::cap(hw, s))),
                        });
                    }
                }
            }
        }
        Ok(chains)
    }

    fn check_untypeds(&self, chains: &[Vec<u64>]) -> Result<(), Violation> {
        let hw = &self.hw;
        // (address, size, slot) of every object capability but untypeds and Zombies.
        let mut objects: Vec<(u64, u64, u64)> = Vec::new();
        for chain in chains {
            for (i, &s) in chain.iter().enumerate() {
                let c = cspace::cap(hw, s);
                if let Cap::Untyped {
                    base,
                    free_index,
                    size_bits,
                    ..
                } = c
                {
                    ensure!(
                        free_index <= 1 << size_bits,
                        "untyped free index past its end",
                        s,
                        free_index
                    );
                    for &z in &chain[i + 1..] {
                        if !cspace::is_parent_of(hw, s, z) {
                            break;
                        }
                        let child = cspace::cap(hw, z);
                        let Some((a, size)) = child.object() else {
                            continue;
                        };
                        let copy = matches!(child, Cap::Untyped { base: b, size_bits: n, .. } if b == base && n == size_bits);
                        ensure!(
                            copy || a + size <= base + free_index,
                            "untyped child above the free index",
                            z,
                            s
                        );
                    }
                } else if let Some((a, size)) = c.object()
                    && !matches!(c, Cap::Zombie { .. })
                {
                    objects.push((a, size, s));
                }
            }
        }
        objects.sort_unstable();
        let (mut last_end, mut last) = (0, (0, 0, 0));
        for &(a, size, s) in &objects {
            if (a, size) == (last.0, last.1) {
                let (x, y) = (cspace::cap(hw, s), cspace::cap(hw, last.2));
                ensure!(
                    core::mem::discriminant(&x) == core::mem::discriminant(&y),
                    "two kinds of object at one address",
                    a,
                    s
                );
                continue;
            }
            ensure!(a >= last_end, "objects overlap", a, last.0);
            last_end = a + size;
            last = (a, size, s);
        }
        Ok(())
    }

    fn check_ready_queues(&self, threads: &BTreeSet<u64>) -> Result<(), Violation> {
        let mut in_queues = 0usize;
        for (cpu, state) in self.cpus.iter().enumerate() {
            let mut highest = None;
            for prio in 0..NUM_PRIORITIES {
                let head = state.ready_head(prio as u8);
                ensure!(
                    (head != 0) == state.ready_bit(prio as u8),
                    "ready bitmap disagrees with a queue",
                    cpu as u64,
                    prio as u64
                );
                let (mut t, mut prev, mut n) = (head, 0, 0);
                while t != 0 {
                    n += 1;
                    ensure!(n < MAX_QUEUE, "ready queue loops", head, 0);
                    let r = self.tcb(t);
                    ensure!(r.queued, "thread in a ready queue not marked queued", t, 0);
                    ensure!(r.state.is_runnable(), "queued thread not runnable", t, 0);
                    ensure!(
                        r.priority as usize == prio,
                        "queued at another priority",
                        t,
                        0
                    );
                    ensure!(r.affinity as usize == cpu, "queued on another CPU", t, 0);
                    ensure!(state.current != t, "thread current and queued", t, 0);
                    ensure!(r.ready_prev == prev, "ready queue prev link wrong", t, prev);
                    prev = t;
                    t = r.ready_next;
                }
                ensure!(
                    state.ready_tail(prio as u8) == prev,
                    "ready queue tail wrong",
                    cpu as u64,
                    prio as u64
                );
                in_queues += n;
                if head != 0 {
                    highest = Some(prio as u8);
                }
            }
            ensure!(
                state.highest_ready() == highest && state.scan_highest() == highest,
                "highest ready priority wrong",
                cpu as u64,
                highest.map_or(0, |p| p as u64 + 1)
            );
            ensure!(
                state.bar_is_current(),
                "direct-switch bar out of date",
                cpu as u64,
                0
            );
        }
        let mut queued = 0usize;
        for &t in threads {
            let r = self.tcb(t);
            if r.queued {
                queued += 1;
            } else {
                ensure!(
                    r.ready_next == 0 && r.ready_prev == 0,
                    "unqueued thread has ready links",
                    t,
                    0
                );
            }
        }
        ensure!(
            queued == in_queues,
            "a queued thread is in no ready queue",
            queued as u64,
            in_queues as u64
        );
        Ok(())
    }

    /// Reply capabilities as the fastpath expects them: only a thread waiting for a
    /// reply has one (its master's only child), and a thread waiting to receive has no
    /// caller capability (Recv deletes it first, and only a completed receive fills it).
    fn check_reply_links(&self, threads: &BTreeSet<u64>) -> Result<(), Violation> {
        for &t in threads {
            let state = self.tcb(t).state;
            let child = cspace::next(&self.hw, tcb::slot(t, tcb::SLOT_REPLY));
            ensure!(
                child == 0 || state == ThreadState::BlockedOnReply,
                "reply capability to a thread not waiting for a reply",
                t,
                child
            );
            ensure!(
                child == 0 || cspace::next(&self.hw, child) == 0,
                "reply capability not the last of its master's chain",
                t,
                child
            );
            let caller = self.hw.read(tcb::slot(t, tcb::SLOT_CALLER));
            ensure!(
                caller == 0
                    || matches!(
                        cspace::cap(&self.hw, tcb::slot(t, tcb::SLOT_CALLER)),
                        Cap::Reply { master: false, .. }
                    ),
                "caller slot holds something other than a reply capability",
                t,
                caller
            );
            ensure!(
                caller == 0 || !matches!(state, ThreadState::BlockedOnReceive { .. }),
                "caller capability held by a thread waiting to receive",
                t,
                caller
            );
        }
        Ok(())
    }

    /// Every thread that can run is where a scheduler finds it: queued, current on a
    /// CPU, or the pending SwitchTo of one (an idle CPU's, between the interrupt that
    /// woke it and the scheduler run that follows). A lost one would never run again.
    fn check_runnable_findable(&self, threads: &BTreeSet<u64>) -> Result<(), Violation> {
        for &t in threads {
            let r = self.tcb(t);
            let found = r.queued
                || self
                    .cpus
                    .iter()
                    .any(|c| c.current == t || c.action() == crate::kernel::Action::SwitchTo(t));
            ensure!(
                !r.state.is_runnable() || found,
                "runnable thread neither queued nor current",
                t,
                0
            );
        }
        Ok(())
    }

    /// An endpoint or notification being finalised (its Zombie in `slot`) is
    /// unreachable but for its waiters: no other capability names it, and a
    /// notification has no bound thread and no IRQ handler signalling it.
    fn check_dying_queues(
        &self,
        dying: &[(Queue, u64)],
        endpoints: &BTreeSet<u64>,
        notifications: &BTreeSet<u64>,
    ) -> Result<(), Violation> {
        for &(q, slot) in dying {
            match q {
                Queue::Endpoint(e) => ensure!(
                    !endpoints.contains(&e),
                    "a capability to an endpoint being finalised",
                    e,
                    slot
                ),
                Queue::Notification(n) => {
                    ensure!(
                        !notifications.contains(&n),
                        "a capability to a notification being finalised",
                        n,
                        slot
                    );
                    ensure!(
                        self.hw.get::<ep::Notification>(n).bound() == 0,
                        "a notification being finalised is bound",
                        n,
                        slot
                    );
                    let signalled = self.irqs.iter().any(|state| {
                        matches!(state, crate::object::irq::IrqState::Signal { notification, .. } if *notification == n)
                    });
                    ensure!(
                        !signalled,
                        "an IRQ handler signals a notification being finalised",
                        n,
                        slot
                    );
                }
            }
        }
        Ok(())
    }

    fn check_wait_queues(
        &self,
        threads: &BTreeSet<u64>,
        endpoints: &BTreeSet<u64>,
        notifications: &BTreeSet<u64>,
    ) -> Result<(), Violation> {
        let mut waiting = BTreeSet::new();
        // The queues named by capabilities and by the waiting threads' states.
        let mut endpoints = endpoints.clone();
        let mut notifications = notifications.clone();
        for &t in threads {
            match self.tcb(t).state {
                ThreadState::BlockedOnSend { endpoint, .. }
                | ThreadState::BlockedOnReceive { endpoint, .. } => {
                    endpoints.insert(endpoint);
                }
                ThreadState::BlockedOnNotification { notification } => {
                    notifications.insert(notification);
                }
                _ => {}
            }
        }
        let queues = endpoints
            .iter()
            .map(|&e| Queue::Endpoint(e))
            .chain(notifications.iter().map(|&n| Queue::Notification(n)));
        for q in queues {
            let (object, head) = match q {
                Queue::Endpoint(e) | Queue::Notification(e) => (e, ep::head(&self.hw, q)),
            };
            let (mut t, mut prev, mut n) = (head, 0, 0);
            let sending =
                head != 0 && matches!(self.tcb(head).state, ThreadState::BlockedOnSend { .. });
            while t != 0 {
                n += 1;
                ensure!(n < MAX_QUEUE, "wait queue loops", object, 0);
                let r = self.tcb(t);
                let matching = match (q, r.state) {
                    (Queue::Endpoint(e), ThreadState::BlockedOnSend { endpoint, .. }) => {
                        endpoint == e && sending
                    }
                    (Queue::Endpoint(e), ThreadState::BlockedOnReceive { endpoint, .. }) => {
                        endpoint == e && !sending
                    }
                    (
                        Queue::Notification(x),
                        ThreadState::BlockedOnNotification { notification },
                    ) => notification == x,
                    _ => false,
                };
                ensure!(
                    matching,
                    "thread in a wait queue in another state",
                    t,
                    object
                );
                ensure!(r.wait_prev == prev, "wait queue prev link wrong", t, prev);
                waiting.insert(t);
                prev = t;
                t = r.wait_next;
            }
            let tail = match q {
                Queue::Endpoint(e) => self.hw.get::<ep::Endpoint>(e).tail,
                Queue::Notification(x) => self.hw.get::<ep::Notification>(x).tail,
            };
            ensure!(tail == prev, "wait queue tail wrong", object, tail);
        }
        for &t in threads {
            let r = self.tcb(t);
            match r.state {
                ThreadState::BlockedOnSend { endpoint, .. }
                | ThreadState::BlockedOnReceive { endpoint, .. } => {
                    ensure!(
                        waiting.contains(&t),
                        "thread blocked on an endpoint is not in its queue",
                        t,
                        endpoint
                    );
                }
                ThreadState::BlockedOnNotification { notification } => {
                    ensure!(
                        waiting.contains(&t),
                        "thread blocked on a notification is not in its queue",
                        t,
                        notification
                    );
                }
                _ => ensure!(
                    r.wait_next == 0 && r.wait_prev == 0,
                    "thread not waiting has wait links",
                    t,
                    0
                ),
            }
        }
        Ok(())
    }
}
