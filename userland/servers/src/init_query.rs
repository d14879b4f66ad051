//! The questions a server given init's question endpoint (the shell) may ask init
//! about the threads init started, and their answers: the client side and the message
//! layouts, shared by init (which answers in its fault loop) and the shell.
//!
//! Every question is a Call on the endpoint in `crate::cspace::slot::INIT` (init's
//! fault endpoint, badged [`QUERY_BADGE`]); thread `i` is init's manifest entry `i`.

use keel_sys::Message;
use keel_sys::cap::{Cap, Endpoint};

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
    /// Its entry returned (`crate::program::EXIT_SYSCALL`); it stays stopped.
    Exited,
}

/// The state word of [`State::Exited`] (0: not started, 1: running, label + 2: faulted).
pub const EXITED: u64 = u64::MAX;

/// What a capability init handed out is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The thread's own TCB (it suspends itself through it if init answers its exit).
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
    /// (code, first argument, second argument).
    pub fn encode(self) -> (u64, u64, u64) {
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

    /// The role of [`Role::encode`]'s words.
    pub fn decode(code: u64, a: u16, b: u16) -> Option<Self> {
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
    pub fn pack(self) -> u64 {
        let (code, a, b) = self.role.encode();
        code | (self.cptr & 0xfff) << 8 | a << 20 | b << 36
    }

    /// Unpacks [`Handed::pack`]'s word.
    pub fn unpack(word: u64) -> Option<Self> {
        let role = Role::decode(word & 0xff, (word >> 20) as u16, (word >> 36) as u16)?;
        Some(Self {
            cptr: (word >> 8) & 0xfff,
            role,
        })
    }
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

/// Question label: what init knows of thread `word 0`; reply label 0 with the words of
/// [`ThreadInfo::message`], or label 1: no such thread.
pub const THREAD: u64 = 2;
/// Question label: the capabilities init handed thread `word 0`: one packed
/// [`Handed`] per reply word.
pub const CAPS: u64 = 3;
/// Question label: init's memory totals and priority ([`SystemInfo`]).
pub const SYSTEM: u64 = 4;

/// Most threads init answers for.
pub const MAX_THREADS: usize = 8;
/// Most capabilities init records per thread.
pub const MAX_CAPS: usize = 12;

/// Longest name a [`ThreadInfo`] carries.
pub const NAME_BYTES: usize = 16;

/// What init knows of one thread it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Its name, NUL-padded.
    pub name: [u8; NAME_BYTES],
    /// The name it serves ("-": none), NUL-padded.
    pub serves: [u8; NAME_BYTES],
    /// Its priority.
    pub priority: u64,
    /// Its CPU.
    pub cpu: u64,
    /// Its TCB's slot in init's root CNode.
    pub tcb: u64,
    /// 0: not started; 1: running; fault label + 2: faulted.
    pub state: u64,
    /// How often init restarted it.
    pub restarts: u64,
    /// Its memory budget in bytes (0: none).
    pub budget: u64,
    /// Bytes of it its objects take.
    pub used: u64,
}

fn text_words(text: &[u8; NAME_BYTES]) -> [u64; 2] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&text[..8]);
    let a = u64::from_le_bytes(w);
    w.copy_from_slice(&text[8..]);
    [a, u64::from_le_bytes(w)]
}

fn words_text(a: u64, b: u64) -> [u8; NAME_BYTES] {
    let mut text = [0; NAME_BYTES];
    text[..8].copy_from_slice(&a.to_le_bytes());
    text[8..].copy_from_slice(&b.to_le_bytes());
    text
}

/// `text` as a NUL-padded name (cut to [`NAME_BYTES`]).
pub fn name_bytes(text: &str) -> [u8; NAME_BYTES] {
    let mut name = [0; NAME_BYTES];
    let n = text.len().min(NAME_BYTES);
    name[..n].copy_from_slice(&text.as_bytes()[..n]);
    name
}

fn name_str(name: &[u8; NAME_BYTES]) -> &str {
    let end = name.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
    core::str::from_utf8(&name[..end]).unwrap_or("?")
}

impl ThreadInfo {
    /// Its name.
    pub fn name(&self) -> &str {
        name_str(&self.name)
    }

    /// The name it serves.
    pub fn serves(&self) -> &str {
        name_str(&self.serves)
    }

    /// Its state.
    pub fn state(&self) -> State {
        match self.state {
            0 => State::NotStarted,
            1 => State::Running,
            EXITED => State::Exited,
            n => State::Faulted(n - 2),
        }
    }

    /// The reply that carries it.
    pub fn message(&self) -> Message {
        let [n0, n1] = text_words(&self.name);
        let [s0, s1] = text_words(&self.serves);
        Message::new(0).words(&[
            n0,
            n1,
            s0,
            s1,
            self.priority,
            self.cpu,
            self.tcb,
            self.state,
            self.restarts,
            self.budget,
            self.used,
        ])
    }
}

/// init's memory totals (from the boot info) and its priority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// RAM untyped bytes.
    pub ram: u64,
    /// Number of RAM untyped capabilities.
    pub ram_caps: u64,
    /// RAM untyped bytes init had not used once the boot-stage servers were up.
    pub free: u64,
    /// Device untyped bytes.
    pub device: u64,
    /// init's priority.
    pub init_priority: u64,
}

impl SystemInfo {
    /// The reply that carries it.
    pub fn message(&self) -> Message {
        Message::new(0).words(&[
            self.ram,
            self.ram_caps,
            self.free,
            self.device,
            self.init_priority,
        ])
    }
}

/// Client side: what init knows of thread `index` (`None`: no such thread).
pub fn thread(init: Cap<Endpoint>, index: usize) -> Option<ThreadInfo> {
    let reply = init.call(&Message::new(THREAD).words(&[index as u64]));
    if reply.label() != 0 {
        return None;
    }
    let w = reply.words::<11>();
    Some(ThreadInfo {
        name: words_text(w[0], w[1]),
        serves: words_text(w[2], w[3]),
        priority: w[4],
        cpu: w[5],
        tcb: w[6],
        state: w[7],
        restarts: w[8],
        budget: w[9],
        used: w[10],
    })
}

/// Client side: the capabilities init handed thread `index`, into `out`; returns how
/// many.
pub fn caps(init: Cap<Endpoint>, index: usize, out: &mut [Handed]) -> usize {
    let reply = init.call(&Message::new(CAPS).words(&[index as u64]));
    let mut n = 0;
    for i in 0..reply.length() {
        if n == out.len() {
            break;
        }
        if let Some(h) = Handed::unpack(reply.mr(i)) {
            out[n] = h;
            n += 1;
        }
    }
    n
}

/// Client side: init's memory totals and priority.
pub fn system(init: Cap<Endpoint>) -> SystemInfo {
    let w = init.call(&Message::new(SYSTEM)).words::<5>();
    SystemInfo {
        ram: w[0],
        ram_caps: w[1],
        free: w[2],
        device: w[3],
        init_priority: w[4],
    }
}
