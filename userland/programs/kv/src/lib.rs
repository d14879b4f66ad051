//! A key-value store server: a fixed table of [`CAPACITY`] `u64` keys and values.
//!
//! Protocol ([`KvRequest`], with the runtime's typed IPC, `keel_rt::protocol`):
//! - [`PUT`] (key, value): stores the value; the reply is empty. A new key in a full
//!   table: `Error::Full`. Putting an existing key replaces its value.
//! - [`GET`] (key): the reply has one word, the value, or none if the key is absent.
//! - [`REMOVE`] (key): removes the key; the reply has its value, or the error
//!   `Error::NotFound`.
//! - a request with too few words: `Error::BadRequest`; any other label:
//!   `Error::UnknownLabel`.
//!
//! Clients use [`put`], [`get`] and [`remove`].
#![no_std]
#![deny(unsafe_code)]

use keel_rt::println;
use keel_rt::protocol::{self, Answer, Error, Request, Service};
use keel_servers::{StartInfo, names};
use keel_sys::cap::{Cap, Endpoint};
use keel_sys::{Message, Received};

/// The name the server registers.
pub const NAME: &str = "kv";
/// How many keys the table holds.
pub const CAPACITY: usize = 16;
/// Request label: store a value.
pub const PUT: u64 = 1;
/// Request label: read a value.
pub const GET: u64 = 2;
/// Request label: remove a key.
pub const REMOVE: u64 = 3;

/// The server's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvRequest {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: u64,
        /// The value.
        value: u64,
    },
    /// The value under this key.
    Get(u64),
    /// Remove this key.
    Remove(u64),
}

impl Request for KvRequest {
    /// One reply type for every request (the protocol's rule): the value, if any.
    /// PUT's reply has none; the client functions give each request its own type.
    type Reply = Option<u64>;

    fn encode(&self) -> Message {
        match *self {
            Self::Put { key, value } => Message::new(PUT).words(&[key, value]),
            Self::Get(key) => Message::new(GET).word(key),
            Self::Remove(key) => Message::new(REMOVE).word(key),
        }
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        let words = message.length();
        match message.label() {
            PUT if words >= 2 => Ok(Self::Put {
                key: message.mr(0),
                value: message.mr(1),
            }),
            GET if words >= 1 => Ok(Self::Get(message.mr(0))),
            REMOVE if words >= 1 => Ok(Self::Remove(message.mr(0))),
            PUT | GET | REMOVE => Err(Error::BadRequest),
            _ => Err(Error::UnknownLabel),
        }
    }
}

/// The table: `CAPACITY` entries, each free or a key and its value.
struct Kv {
    entries: [Option<(u64, u64)>; CAPACITY],
}

impl Kv {
    fn find(&self, key: u64) -> Option<usize> {
        self.entries
            .iter()
            .position(|entry| matches!(entry, Some((k, _)) if *k == key))
    }

    fn put(&mut self, key: u64, value: u64) -> Result<Option<u64>, Error> {
        let index = match self.find(key) {
            Some(index) => index,
            None => self
                .entries
                .iter()
                .position(Option::is_none)
                .ok_or(Error::Full)?,
        };
        self.entries[index] = Some((key, value));
        Ok(None)
    }

    fn get(&self, key: u64) -> Option<u64> {
        self.find(key).and_then(|i| self.entries[i]).map(|(_, v)| v)
    }

    fn remove(&mut self, key: u64) -> Result<Option<u64>, Error> {
        let index = self.find(key).ok_or(Error::NotFound)?;
        Ok(self.entries[index].take().map(|(_, v)| v))
    }
}

impl Service for Kv {
    type Request = KvRequest;

    fn handle(&mut self, request: KvRequest, _badge: u64) -> Answer<Option<u64>> {
        Answer::Now(match request {
            KvRequest::Put { key, value } => self.put(key, value),
            KvRequest::Get(key) => Ok(self.get(key)),
            KvRequest::Remove(key) => self.remove(key),
        })
    }
}

/// The server's thread: registers with the name service, then answers requests
/// forever.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let ep = Cap::<Endpoint>::from_cptr(start.serve);
    if let Err(e) = names::register(Cap::from_cptr(start.names), NAME, ep) {
        println!("kv: cannot register: {e:?}");
        return;
    }
    protocol::serve(
        ep,
        &mut Kv {
            entries: [None; CAPACITY],
        },
    )
}

/// Client side: stores `value` under `key` (`Error::Full` if the key is new and the
/// table is full).
pub fn put(server: Cap<Endpoint>, key: u64, value: u64) -> Result<(), Error> {
    protocol::call(server, &KvRequest::Put { key, value }).map(|_| ())
}

/// Client side: the value under `key`, if any.
pub fn get(server: Cap<Endpoint>, key: u64) -> Result<Option<u64>, Error> {
    protocol::call(server, &KvRequest::Get(key))
}

/// Client side: removes `key` and returns its value (`Error::NotFound` if absent).
pub fn remove(server: Cap<Endpoint>, key: u64) -> Result<u64, Error> {
    protocol::call(server, &KvRequest::Remove(key))?.ok_or(Error::BadReply)
}
