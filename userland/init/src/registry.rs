//! init's bookkeeping of the threads it started, for the shell's `ps` and `caps`: each
//! thread's TCB and CNode (capability pointers in init's root CNode), CPU and state
//! (running, or faulted with the fault's label, as init's fault loop saw it), how often
//! init restarted it, and the capabilities init handed it: each with its slot in the
//! thread's own CSpace and what it is for.
//!
//! Thread `i` is manifest entry `i`, and its memory budget (bytes, and bytes its
//! objects take) is recorded with it. init writes an entry before it starts the thread
//! and when it reports a fault; the shell reads the entries. The shell runs init's
//! image, so these statics are shared with it; only init writes them.

use core::sync::atomic::{AtomicU64, Ordering};

pub use keel_servers::init_query::{Handed, QUERY_BADGE, Role, ThreadInfo, name_bytes};

use crate::manifest::SERVERS;

/// Threads the registry can hold, and capabilities recorded per thread.
pub use keel_servers::init_query::{MAX_CAPS, MAX_THREADS};
const _: () = assert!(SERVERS.len() <= MAX_THREADS);

/// The capabilities handed to one thread, collected before init records it (more than
/// [`MAX_CAPS`] are not recorded).
#[derive(Clone, Copy, Debug)]
pub struct HandedList {
    items: [Handed; MAX_CAPS],
    count: usize,
}

impl HandedList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            items: [Handed {
                cptr: 0,
                role: Role::Tcb,
            }; MAX_CAPS],
            count: 0,
        }
    }

    /// Adds the capability at `cptr` with its role.
    pub fn push(&mut self, cptr: u64, role: Role) {
        if self.count < MAX_CAPS {
            self.items[self.count] = Handed { cptr, role };
            self.count += 1;
        }
    }
}

/// One thread's entry, as atomics (0: nothing recorded).
struct Entry {
    /// TCB capability pointer + 1.
    tcb: AtomicU64,
    /// Capability pointer of its CNode + 1 (0 + 1: it runs in init's root CNode).
    cnode: AtomicU64,
    /// CPU + 1.
    cpu: AtomicU64,
    /// How often init restarted it.
    restarts: AtomicU64,
    /// 0: not started; 1: running; label + 2: faulted; `init_query::EXITED`.
    state: AtomicU64,
    /// Packed [`Handed`] records.
    caps: [AtomicU64; MAX_CAPS],
    /// Its memory budget in bytes (0: none, it runs in init's image).
    budget: AtomicU64,
    /// Bytes of the budget its objects take (init's count, at start).
    used: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Entry = Entry {
    tcb: AtomicU64::new(0),
    cnode: AtomicU64::new(0),
    cpu: AtomicU64::new(0),
    restarts: AtomicU64::new(0),
    state: AtomicU64::new(0),
    caps: [const { AtomicU64::new(0) }; MAX_CAPS],
    budget: AtomicU64::new(0),
    used: AtomicU64::new(0),
};

static ENTRIES: [Entry; MAX_THREADS] = [EMPTY; MAX_THREADS];

/// The name of thread `index`.
pub fn name(index: usize) -> &'static str {
    SERVERS.get(index).map_or("?", |s| s.name)
}

/// Records thread `index`'s memory budget and the bytes of it its objects take.
pub fn set_budget(index: usize, budget: u64, used: u64) {
    if let Some(entry) = ENTRIES.get(index) {
        entry.budget.store(budget, Ordering::Relaxed);
        entry.used.store(used, Ordering::Relaxed);
    }
}

/// Thread `index`'s memory budget and the bytes of it its objects take ((0, 0): it
/// has none).
pub fn budget(index: usize) -> (u64, u64) {
    ENTRIES.get(index).map_or((0, 0), |e| {
        (
            e.budget.load(Ordering::Relaxed),
            e.used.load(Ordering::Relaxed),
        )
    })
}

/// Records that thread `index` (TCB `tcb` and CNode `cnode` in init's root CNode, 0:
/// the root CNode itself; on `cpu`) was started with `caps`.
pub fn started(index: usize, tcb: u64, cnode: u64, cpu: u64, caps: &HandedList) {
    let entry = &ENTRIES[index];
    let words = caps.items[..caps.count]
        .iter()
        .copied()
        .map(Handed::pack)
        .chain(core::iter::repeat(0));
    for (slot, word) in entry.caps.iter().zip(words) {
        slot.store(word, Ordering::Relaxed);
    }
    entry.tcb.store(tcb + 1, Ordering::Relaxed);
    entry.cnode.store(cnode + 1, Ordering::Relaxed);
    entry.cpu.store(cpu + 1, Ordering::Relaxed);
    entry.state.store(1, Ordering::Release);
}

/// Records that thread `index` faulted with fault label `label`.
pub fn faulted(index: usize, label: u64) {
    if let Some(entry) = ENTRIES.get(index) {
        entry.state.store(label + 2, Ordering::Release);
    }
}

/// Records that thread `index`'s entry returned.
pub fn exited(index: usize) {
    if let Some(entry) = ENTRIES.get(index) {
        entry
            .state
            .store(keel_servers::init_query::EXITED, Ordering::Release);
    }
}

/// Records that init restarted thread `index` (after [`started`] for the new
/// instance, which set it running).
pub fn restarted(index: usize) {
    if let Some(entry) = ENTRIES.get(index) {
        entry.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// How often init restarted thread `index`.
pub fn restarts(index: usize) -> u64 {
    ENTRIES
        .get(index)
        .map_or(0, |e| e.restarts.load(Ordering::Relaxed))
}

/// Thread `index`'s CNode in init's root CNode, once started (0: the root CNode).
pub fn cnode(index: usize) -> Option<u64> {
    ENTRIES
        .get(index)?
        .cnode
        .load(Ordering::Relaxed)
        .checked_sub(1)
}

/// Thread `index`'s CPU, once started.
pub fn cpu(index: usize) -> Option<u64> {
    ENTRIES
        .get(index)?
        .cpu
        .load(Ordering::Relaxed)
        .checked_sub(1)
}

/// Thread `index`'s TCB capability pointer, once started.
pub fn tcb(index: usize) -> Option<u64> {
    ENTRIES
        .get(index)?
        .tcb
        .load(Ordering::Relaxed)
        .checked_sub(1)
}

/// What init knows of thread `index`, as the shell asks it
/// (`keel_servers::init_query::THREAD`).
pub fn thread_info(index: usize) -> Option<ThreadInfo> {
    let server = SERVERS.get(index)?;
    let entry = &ENTRIES[index];
    let (budget, used) = budget(index);
    Some(ThreadInfo {
        name: name_bytes(server.name),
        serves: name_bytes(server.serves.unwrap_or("-")),
        priority: server.priority as u64,
        cpu: cpu(index).unwrap_or(0),
        tcb: tcb(index).unwrap_or(0),
        state: entry.state.load(Ordering::Acquire),
        restarts: restarts(index),
        budget,
        used,
    })
}

/// The capabilities handed to thread `index`, in the order init recorded them.
pub fn caps(index: usize) -> impl Iterator<Item = Handed> {
    ENTRIES
        .get(index)
        .into_iter()
        .flat_map(|e| e.caps.iter())
        .filter_map(|c| Handed::unpack(c.load(Ordering::Relaxed)))
}
