//! Keel's user-level servers and their client sides: the name service ([`names`]), the
//! echo server ([`echo`], the template for new servers; see doc/writing-a-server.md),
//! the serial server ([`serial`]: COM1 by interrupt, and the `log` backend) and the
//! timer server ([`timer`]: the PIT's ticks, `sleep`) and the power service
//! ([`power`]: ACPI power off and reset).
//!
//! Each server is also a program of its own: a crate `userland/programs/NAME` whose
//! binary init loads from its boot module into an address space and a memory budget of
//! its own ([`program`], [`loader`]).
//!
//! A server is a function `fn(u64)` that init (or a test) runs as a thread; its
//! argument is a packed [`StartInfo`] naming the capabilities it was given. init runs
//! each server in a CSpace of its own ([`cspace`]: one guarded CNode holding exactly
//! what the manifest lists, at well-known slots), so a server can invoke nothing else.
//! Every capability pointer a server uses is one of its [`StartInfo`]'s, or a slot of
//! its window, in the CNode [`StartInfo::cnode`].
#![no_std]
#![forbid(unsafe_code)]

// The modules moved here from init (power) name this crate by its name.
extern crate self as keel_servers;

pub mod cspace;
pub mod echo;
pub mod init_query;
pub mod loader;
pub mod names;
pub mod power;
pub mod program;
pub mod serial;
pub mod timer;

use keel_rt::SlotAllocator;
use keel_sys::cap::{CNode, Cap, Endpoint};

/// What a server starts with, packed into its thread's one argument word: capability
/// pointers in the server's CSpace (12 bits each, as many as the root CNode has slots;
/// 0 = none). In a CSpace of its own they are the well-known [`cspace::slot`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartInfo {
    /// The endpoint the server receives requests on.
    pub serve: u64,
    /// A badged endpoint capability to the name service.
    pub names: u64,
    /// First of the free slots the server may fill (received or minted capabilities).
    pub slots: u64,
    /// How many free slots from [`StartInfo::slots`].
    pub slot_count: u64,
    /// An I/O port capability (the serial server: COM1).
    pub io_port: u64,
}

const FIELD_BITS: u32 = 12;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

impl StartInfo {
    /// The argument word (panics if a field does not fit in 12 bits).
    pub fn pack(&self) -> u64 {
        let fields = [
            self.serve,
            self.names,
            self.slots,
            self.slot_count,
            self.io_port,
        ];
        let mut word = 0;
        for (i, f) in fields.iter().enumerate() {
            assert!(*f <= FIELD_MASK, "start info field {i} too large: {f}");
            word |= f << (i as u32 * FIELD_BITS);
        }
        word
    }

    /// Unpacks an argument word made by [`StartInfo::pack`].
    pub fn unpack(word: u64) -> Self {
        let f = |i: u32| (word >> (i * FIELD_BITS)) & FIELD_MASK;
        Self {
            serve: f(0),
            names: f(1),
            slots: f(2),
            slot_count: f(3),
            io_port: f(4),
        }
    }
}

impl StartInfo {
    /// The CNode the server's capability pointers resolve in, for CNode invocations on
    /// its own slots (receive slots, SaveCaller, Delete): slot [`cspace::slot::CNODE`]
    /// (2), which is the server's own CNode in a CSpace of its own and the root CNode
    /// when it runs in the root task's CSpace. It resolves at depth 64
    /// (`keel_rt::ROOT_DEPTH`) either way.
    pub fn cnode(&self) -> Cap<CNode> {
        Cap::from_cptr(cspace::slot::CNODE)
    }

    /// The server's window of free slots, as the runtime's slot allocator.
    pub fn slot_allocator(&self) -> SlotAllocator {
        SlotAllocator::new(self.slots, self.slots + self.slot_count)
    }

    /// Looks `name` up in the name service this server was given, into a slot taken
    /// from `slots`: the server's endpoint (badged for this client), or `None` if there
    /// is no name service, no free slot or no such name (the slot goes back then).
    pub fn look_up(&self, slots: &mut SlotAllocator, name: &str) -> Option<Cap<Endpoint>> {
        if self.names == 0 {
            return None;
        }
        let slot = slots.alloc().ok()?;
        let found = names::lookup(Cap::from_cptr(self.names), name, self.cnode(), slot).ok();
        if found.is_none() {
            slots.free(slot);
        }
        found
    }
}

/// Writes `text` into message words as the servers' text encoding: word 0 is the length
/// in bytes, then the bytes, eight per word, little-endian. Text that does not fit is
/// cut. Returns how many words were written.
pub fn text_to_words(text: &[u8], words: &mut [u64]) -> usize {
    let Some((length, body)) = words.split_first_mut() else {
        return 0;
    };
    let used = text.len().min(body.len() * 8);
    *length = used as u64;
    for (word, chunk) in body.iter_mut().zip(text[..used].chunks(8)) {
        let mut raw = [0u8; 8];
        raw[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(raw);
    }
    1 + used.div_ceil(8)
}

/// Reads text written by [`text_to_words`] from `word(0)`, `word(1)`, ... into `out`;
/// returns the bytes read (at most `out.len()`).
pub fn text_from_words(word: impl Fn(usize) -> u64, out: &mut [u8]) -> &[u8] {
    let length = (word(0) as usize).min(out.len());
    for (i, chunk) in out[..length].chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&word(1 + i).to_le_bytes()[..chunk.len()]);
    }
    &out[..length]
}
