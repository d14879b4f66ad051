//! The name service: servers register an endpoint under a name; clients look a name up
//! and get a badged copy of that endpoint (badge: the client's own badge at the name
//! service, so the server can tell its clients apart).
//!
//! Protocol ([`NamesRequest`], with the runtime's typed IPC, `keel_rt::protocol`):
//! - [`REGISTER`]: words `[len, name 0..8, name 8..16]`, one capability (an unbadged
//!   endpoint, sent with the Grant right on the name-service capability). Refused with
//!   `Error::Exists` or `Error::Full`.
//! - [`LOOKUP`]: words `[len, name 0..8, name 8..16]`; the reply carries the badged
//!   endpoint, or the error is `Error::NotFound`.
//!
//! Names are 1 to [`MAX_NAME`] bytes. A name belongs to the client (badge) that
//! registered it: a second REGISTER of the name from the same badge replaces the
//! endpoint (a restarted server registers again), from another badge it is refused
//! with [`Status::Exists`].
//!
//! The service keeps the endpoints it was sent, and mints the copies it hands out, in
//! its window of free slots in its own CNode ([`StartInfo::cnode`]).

use keel_rt::protocol::{self, Answer, Error, Request};
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

/// A name in the servers' text encoding: `[len, bytes 0..8, bytes 8..16]`.
pub type Name = [u64; 3];

/// The name service's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamesRequest {
    /// Register the endpoint sent along (the client's capability pointer when sending;
    /// 0 once received: it is in the receive slot).
    Register(Name, u64),
    /// Look a name up.
    Lookup(Name),
}

/// A successful reply: whether it carried a capability (a lookup's endpoint, which
/// lands in the client's receive slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted(pub Option<u64>);

impl protocol::Reply for Granted {
    fn encode(&self) -> Message {
        match self.0 {
            Some(slot) => Message::new(protocol::OK).cap(Cap::<Endpoint>::from_cptr(slot)),
            None => Message::new(protocol::OK),
        }
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match (message.extra_caps(), message.caps_unwrapped()) {
            (0, _) => Ok(Self(None)),
            (1, 0) => Ok(Self(Some(0))),
            _ => Err(Error::BadReply),
        }
    }
}

impl Request for NamesRequest {
    type Reply = Granted;

    fn encode(&self) -> Message {
        match *self {
            Self::Register(name, endpoint) => {
                Message::new(REGISTER)
                    .words(&name)
                    .cap(Cap::<Endpoint>::from_cptr(endpoint))
            }
            Self::Lookup(name) => Message::new(LOOKUP).words(&name),
        }
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        let name = message.words::<3>();
        let well_formed = message.length() >= 3 && (1..=MAX_NAME as u64).contains(&name[0]);
        match message.label() {
            REGISTER
                if well_formed && message.extra_caps() == 1 && message.caps_unwrapped() == 0 =>
            {
                Ok(Self::Register(name, 0))
            }
            LOOKUP if well_formed => Ok(Self::Lookup(name)),
            REGISTER | LOOKUP => Err(Error::BadRequest),
            _ => Err(Error::UnknownLabel),
        }
    }
}

/// The name in the servers' encoding; `Error::BadRequest` if it is empty or longer
/// than [`MAX_NAME`].
pub fn encode(name: &str) -> Result<Name, Error> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME {
        return Err(Error::BadRequest);
    }
    let mut words = [0; 3];
    crate::text_to_words(bytes, &mut words);
    Ok(words)
}

/// Registers `endpoint` under `name` at the name service `names`.
pub fn register(names: Cap<Endpoint>, name: &str, endpoint: Cap<Endpoint>) -> Result<(), Error> {
    protocol::call(
        names,
        &NamesRequest::Register(encode(name)?, endpoint.cptr()),
    )
    .map(|_| ())
}

/// Looks `name` up at the name service `names`; the endpoint lands in slot `slot` of
/// `cnode` (the caller's own CNode, resolving at depth 64), which must be empty.
pub fn lookup(
    names: Cap<Endpoint>,
    name: &str,
    cnode: Cap<CNode>,
    slot: u64,
) -> Result<Cap<Endpoint>, Error> {
    let name = encode(name)?;
    set_receive_slot(cnode, slot, ROOT_DEPTH);
    match protocol::call(names, &NamesRequest::Lookup(name))? {
        Granted(Some(_)) => Ok(Cap::from_cptr(slot)),
        Granted(None) => Err(Error::BadReply),
    }
}

#[derive(Clone, Copy, Default)]
struct Entry {
    name: Name,
    slot: u64,
    /// Badge of the client that registered it.
    owner: u64,
}

struct Directory {
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

impl Directory {
    fn find(&self, name: &Name) -> Option<&Entry> {
        self.entries[..self.count].iter().find(|e| e.name == *name)
    }

    /// Registers the endpoint that arrived in the receive slot under `name` for
    /// `badge`.
    fn register(&mut self, name: Name, badge: u64) -> Result<Granted, Error> {
        // The capability arrived in the receive slot; take it only if we keep it.
        let Some(slot) = self.receive_slot else {
            return Err(Error::Full);
        };
        if let Some(i) = self.entries[..self.count]
            .iter()
            .position(|e| e.name == name)
        {
            if self.entries[i].owner != badge {
                let _ = self.cnode.delete(slot, ROOT_DEPTH);
                return Err(Error::Exists);
            }
            // Its owner registers it again (restarted): the new endpoint replaces the
            // old one, whose slot becomes the next receive slot.
            let old = self.entries[i].slot;
            let _ = self.cnode.delete(old, ROOT_DEPTH);
            self.entries[i].slot = slot;
            self.receive_slot = Some(old);
            return Ok(Granted(None));
        }
        if self.count == CAPACITY {
            let _ = self.cnode.delete(slot, ROOT_DEPTH);
            return Err(Error::Full);
        }
        self.receive_slot = self.slots.alloc().ok();
        self.entries[self.count] = Entry {
            name,
            slot,
            owner: badge,
        };
        self.count += 1;
        Ok(Granted(None))
    }

    /// Mints the client's copy of `name`'s endpoint, badged with the client's badge.
    fn lookup(&mut self, name: Name, badge: u64) -> Result<Granted, Error> {
        let source = self.find(&name).ok_or(Error::NotFound)?.slot;
        let slot = self.mint_slot;
        let badge = if badge == 0 { 1 } else { badge };
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
            .map_err(|_| Error::Full)?;
        self.sent = Some(slot);
        Ok(Granted(Some(slot)))
    }
}

impl protocol::Service for Directory {
    type Request = NamesRequest;

    fn handle(&mut self, request: NamesRequest, badge: u64) -> Answer<Granted> {
        match request {
            NamesRequest::Register(name, _) => self.register(name, badge),
            NamesRequest::Lookup(name) => self.lookup(name, badge),
        }
        .into()
    }

    fn before_wait(&mut self) {
        if let Some(free) = self.receive_slot {
            set_receive_slot(self.cnode, free, ROOT_DEPTH);
        }
    }

    fn replied(&mut self) {
        // The reply (and its copy of the minted capability) is out: drop ours.
        if let Some(slot) = self.sent.take() {
            let _ = self.cnode.delete(slot, ROOT_DEPTH);
        }
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
    let mut service = Directory {
        cnode,
        entries: [Entry::default(); CAPACITY],
        count: 0,
        slots,
        receive_slot: Some(first),
        mint_slot,
        sent: None,
    };
    protocol::serve(ep, &mut service)
}
