//! The name service: servers register an endpoint under a name; clients look a name up
//! and get a badged copy of that endpoint (badge: the client's own badge at the name
//! service, so the server can tell its clients apart).
//!
//! Protocol (Calls; the reply label is a [`Status`]):
//! - [`REGISTER`]: words `[len, name 0..8, name 8..16]`, one capability (an unbadged
//!   endpoint, sent with the Grant right on the name-service capability).
//! - [`LOOKUP`]: words `[len, name 0..8, name 8..16]`; a successful reply carries the
//!   badged endpoint.
//!
//! Names are 1 to [`MAX_NAME`] bytes. A name belongs to the client (badge) that
//! registered it: a second REGISTER of the name from the same badge replaces the
//! endpoint (a restarted server registers again), from another badge it is refused
//! with [`Status::Exists`].
//!
//! The service keeps the endpoints it was sent, and mints the copies it hands out, in
//! its window of free slots in its own CNode ([`StartInfo::cnode`]).

use keel_rt::{ROOT_DEPTH, SlotAllocator, println};
use keel_sys::cap::{CNode, Cap, Endpoint};
use keel_sys::ipc::set_receive_slot;
use keel_sys::{CapRights, Message, Received};

use crate::StartInfo;

/// Request label: register an endpoint.
pub const REGISTER: u64 = 1;
/// Request label: look a name up.
pub const LOOKUP: u64 = 2;
/// Longest name in bytes.
pub const MAX_NAME: usize = 16;
/// How many names the service holds.
pub const CAPACITY: usize = 32;

/// Reply labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// No endpoint is registered under the name.
    NotFound = 1,
    /// The name is already registered.
    Exists = 2,
    /// The service has no room (names or slots) left.
    Full = 3,
    /// Malformed request (bad name, missing capability, unknown label).
    BadRequest = 4,
}

impl Status {
    fn from_label(label: u64) -> Self {
        match label {
            0 => Self::Ok,
            1 => Self::NotFound,
            2 => Self::Exists,
            3 => Self::Full,
            _ => Self::BadRequest,
        }
    }
}

/// Why a client request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The service said no.
    Refused(Status),
    /// The name is empty or longer than [`MAX_NAME`].
    BadName,
    /// The reply carried no capability.
    NoCapability,
}

fn encode(name: &str) -> Result<[u64; 3], Error> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME {
        return Err(Error::BadName);
    }
    let mut words = [0; 3];
    crate::text_to_words(bytes, &mut words);
    Ok(words)
}

/// Registers `endpoint` under `name` at the name service `names`.
pub fn register(names: Cap<Endpoint>, name: &str, endpoint: Cap<Endpoint>) -> Result<(), Error> {
    let words = encode(name)?;
    let reply = names.call(&Message::new(REGISTER).words(&words).cap(endpoint));
    match Status::from_label(reply.label()) {
        Status::Ok => Ok(()),
        s => Err(Error::Refused(s)),
    }
}

/// Looks `name` up at the name service `names`; the endpoint lands in slot `slot` of
/// `cnode` (the caller's own CNode, resolving at depth 64), which must be empty.
pub fn lookup(
    names: Cap<Endpoint>,
    name: &str,
    cnode: Cap<CNode>,
    slot: u64,
) -> Result<Cap<Endpoint>, Error> {
    let words = encode(name)?;
    set_receive_slot(cnode, slot, ROOT_DEPTH);
    let reply = names.call(&Message::new(LOOKUP).words(&words));
    match Status::from_label(reply.label()) {
        Status::Ok if reply.extra_caps() == 1 && reply.caps_unwrapped() == 0 => {
            Ok(Cap::from_cptr(slot))
        }
        Status::Ok => Err(Error::NoCapability),
        s => Err(Error::Refused(s)),
    }
}

#[derive(Clone, Copy, Default)]
struct Entry {
    name: [u64; 3],
    slot: u64,
    /// Badge of the client that registered it.
    owner: u64,
}

struct Service {
    /// The service's own CNode.
    cnode: Cap<CNode>,
    entries: [Entry; CAPACITY],
    count: usize,
    slots: SlotAllocator,
    /// The empty slot the next received capability lands in (`None`: out of slots).
    receive_slot: Option<u64>,
    /// Where lookups mint the client's copy (empty between requests).
    mint_slot: u64,
    /// A minted capability sent in the last reply, deleted once the reply is out.
    sent: Option<u64>,
}

impl Service {
    fn name_of(r: &Received) -> Option<[u64; 3]> {
        let words = r.words::<3>();
        (r.length() >= 3 && (1..=MAX_NAME as u64).contains(&words[0])).then_some(words)
    }

    fn find(&self, name: &[u64; 3]) -> Option<&Entry> {
        self.entries[..self.count].iter().find(|e| e.name == *name)
    }

    fn handle(&mut self, r: &Received) -> Message {
        let status = match r.label() {
            REGISTER => self.register(r),
            LOOKUP => match self.lookup(r) {
                Ok(slot) => {
                    return Message::new(Status::Ok as u64).cap(Cap::<Endpoint>::from_cptr(slot));
                }
                Err(s) => s,
            },
            _ => Status::BadRequest,
        };
        Message::new(status as u64)
    }

    fn register(&mut self, r: &Received) -> Status {
        let Some(name) = Self::name_of(r) else {
            return Status::BadRequest;
        };
        if r.extra_caps() != 1 || r.caps_unwrapped() != 0 {
            return Status::BadRequest;
        }
        // The capability arrived in the receive slot; take it only if we keep it.
        let Some(slot) = self.receive_slot else {
            return Status::Full;
        };
        if let Some(i) = self.entries[..self.count]
            .iter()
            .position(|e| e.name == name)
        {
            if self.entries[i].owner != r.badge {
                let _ = self.cnode.delete(slot, ROOT_DEPTH);
                return Status::Exists;
            }
            // Its owner registers it again (restarted): the new endpoint replaces the
            // old one, whose slot becomes the next receive slot.
            let old = self.entries[i].slot;
            let _ = self.cnode.delete(old, ROOT_DEPTH);
            self.entries[i].slot = slot;
            self.receive_slot = Some(old);
            return Status::Ok;
        }
        if self.count == CAPACITY {
            let _ = self.cnode.delete(slot, ROOT_DEPTH);
            return Status::Full;
        }
        self.receive_slot = self.slots.alloc().ok();
        self.entries[self.count] = Entry {
            name,
            slot,
            owner: r.badge,
        };
        self.count += 1;
        Status::Ok
    }

    fn lookup(&mut self, r: &Received) -> Result<u64, Status> {
        let name = Self::name_of(r).ok_or(Status::BadRequest)?;
        let source = self.find(&name).ok_or(Status::NotFound)?.slot;
        let slot = self.mint_slot;
        let badge = if r.badge == 0 { 1 } else { r.badge };
        self.cnode
            .mint(
                slot,
                ROOT_DEPTH,
                self.cnode,
                source,
                ROOT_DEPTH,
                CapRights::ALL,
                badge,
            )
            .map_err(|_| Status::Full)?;
        self.sent = Some(slot);
        Ok(slot)
    }
}

/// The name service's thread: serves [`StartInfo::serve`], keeping received and minted
/// capabilities in its slot window.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let ep = Cap::<Endpoint>::from_cptr(start.serve);
    let mut slots = start.slot_allocator();
    let (Ok(mint_slot), Ok(first)) = (slots.alloc(), slots.alloc()) else {
        println!("names: needs at least two slots");
        return;
    };
    let cnode = start.cnode();
    let mut service = Service {
        cnode,
        entries: [Entry::default(); CAPACITY],
        count: 0,
        slots,
        receive_slot: Some(first),
        mint_slot,
        sent: None,
    };
    set_receive_slot(cnode, first, ROOT_DEPTH);
    let mut request = ep.recv();
    loop {
        let reply = service.handle(&request);
        if let Some(free) = service.receive_slot {
            set_receive_slot(cnode, free, ROOT_DEPTH);
        }
        request = ep.reply_recv(&reply);
        // The reply (and its copy of the minted capability) is out: drop ours.
        if let Some(slot) = service.sent.take() {
            let _ = cnode.delete(slot, ROOT_DEPTH);
        }
    }
}
