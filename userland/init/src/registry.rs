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

use keel_sys::Message;
use keel_sys::cap::{Cap, Endpoint};

use crate::manifest::SERVERS;

/// Threads the registry can hold: the manifest's servers.
pub const MAX_THREADS: usize = 8;
/// Capabilities recorded per thread.
pub const MAX_CAPS: usize = 12;
const _: () = assert!(SERVERS.len() <= MAX_THREADS);

/// What init knows about a thread's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not started (yet).
    NotStarted,
    /// Started, and no fault reported since.
    Running,
    /// Its fault reached init, with this fault label; it stays stopped (or is being
    /// restarted).
    Faulted(u64),
}

/// What a capability init handed out is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The thread's own TCB (it suspends itself through it when its entry returns).
    Tcb,
    /// The endpoint it serves requests on.
    Serve,
    /// Its badged capability to the name service.
    Names,
    /// The first of `count` free slots it may fill.
    Slots(u16),
    /// I/O ports `first..=last`.
    IoPort(u16, u16),
    /// Its fault endpoint (badged; init receives the faults).
    Fault,
    /// The handler of this ISA IRQ.
    IrqHandler(u8),
    /// The notification its IRQs signal, bound to its TCB (init keeps the capability;
    /// it is not in the thread's CSpace).
    BoundNotification,
    /// Its own CNode, of 2^radix slots (guarded: it resolves 64-bit pointers).
    CNode(u8),
    /// An endpoint to ask init about the threads it started ([`identify`]).
    Init,
    /// What is left of its memory budget: an untyped of 2^bits bytes.
    Untyped(u8),
}

impl Role {
    fn encode(self) -> (u64, u64, u64) {
        match self {
            Role::Tcb => (1, 0, 0),
            Role::Serve => (2, 0, 0),
            Role::Names => (3, 0, 0),
            Role::Slots(count) => (4, count as u64, 0),
            Role::IoPort(first, last) => (5, first as u64, last as u64),
            Role::Fault => (6, 0, 0),
            Role::IrqHandler(irq) => (7, irq as u64, 0),
            Role::BoundNotification => (8, 0, 0),
            Role::CNode(radix) => (9, radix as u64, 0),
            Role::Init => (10, 0, 0),
            Role::Untyped(bits) => (11, bits as u64, 0),
        }
    }

    fn decode(code: u64, a: u16, b: u16) -> Option<Self> {
        Some(match code {
            1 => Role::Tcb,
            2 => Role::Serve,
            3 => Role::Names,
            4 => Role::Slots(a),
            5 => Role::IoPort(a, b),
            6 => Role::Fault,
            7 => Role::IrqHandler(a as u8),
            8 => Role::BoundNotification,
            9 => Role::CNode(a as u8),
            10 => Role::Init,
            11 => Role::Untyped(a as u8),
            _ => return None,
        })
    }
}

/// One capability handed out: its slot in the thread's CSpace and its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handed {
    /// Capability pointer.
    pub cptr: u64,
    /// What it is for.
    pub role: Role,
}

impl Handed {
    /// Packs into one word: role code, cptr (12 bits), two 16-bit role arguments.
    fn pack(self) -> u64 {
        let (code, a, b) = self.role.encode();
        code | (self.cptr & 0xfff) << 8 | a << 20 | b << 36
    }

    fn unpack(word: u64) -> Option<Self> {
        let role = Role::decode(word & 0xff, (word >> 20) as u16, (word >> 36) as u16)?;
        Some(Self {
            cptr: (word >> 8) & 0xfff,
            role,
        })
    }
}

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
    /// 0: not started; 1: running; label + 2: faulted.
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

/// The priority thread `index` was started at.
pub fn priority(index: usize) -> u8 {
    SERVERS.get(index).map_or(0, |s| s.priority)
}

/// The index of the thread called `name`.
pub fn find(name: &str) -> Option<usize> {
    (0..SERVERS.len()).find(|&i| self::name(i) == name)
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

/// Thread `index`'s state.
pub fn state(index: usize) -> State {
    match ENTRIES
        .get(index)
        .map_or(0, |e| e.state.load(Ordering::Acquire))
    {
        0 => State::NotStarted,
        1 => State::Running,
        n => State::Faulted(n - 2),
    }
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

/// The capabilities handed to thread `index`, in the order init recorded them.
pub fn caps(index: usize) -> impl Iterator<Item = Handed> {
    ENTRIES
        .get(index)
        .into_iter()
        .flat_map(|e| e.caps.iter())
        .filter_map(|c| Handed::unpack(c.load(Ordering::Relaxed)))
}

/// Badge of the endpoint capability through which a thread asks init questions (it is
/// init's fault endpoint; fault badges are registry index + 1, all smaller).
pub const QUERY_BADGE: u64 = 1 << 40;
/// Question label: what is in slot `word 1` of thread `word 0`'s CSpace? The reply's
/// words are `[status, tag]`: see [`SlotContents`].
pub const IDENTIFY: u64 = 1;

/// What init found in a slot of a thread's CSpace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotContents {
    /// A capability with this type tag (`keel_abi::object::cap_tag`; NULL: empty).
    Tag(u64),
    /// A capability init cannot copy out to look at (a saved reply capability).
    Uncopyable,
    /// No such thread or slot.
    Unknown,
}

impl SlotContents {
    /// The reply that carries it.
    pub fn message(self) -> Message {
        let words = match self {
            Self::Tag(tag) => [0, tag],
            Self::Uncopyable => [1, 0],
            Self::Unknown => [2, 0],
        };
        Message::new(0).words(&words)
    }
}

/// Client side: asks init (through `init`, badged [`QUERY_BADGE`]) what is in `slot`
/// of thread `index`'s CSpace.
pub fn identify(init: Cap<Endpoint>, index: usize, slot: u64) -> SlotContents {
    let reply = init.call(&Message::new(IDENTIFY).words(&[index as u64, slot]));
    match reply.words::<2>() {
        [0, tag] => SlotContents::Tag(tag),
        [1, _] => SlotContents::Uncopyable,
        _ => SlotContents::Unknown,
    }
}
