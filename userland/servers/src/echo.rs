//! The echo server: the smallest complete server, and the template for new ones.
//!
//! Protocol ([`EchoRequest`], with the runtime's typed IPC, `keel_rt::protocol`):
//! - [`ECHO`]: up to [`MAX_WORDS`] words (longer requests are cut); the reply carries
//!   the same words.
//! - [`FAULT`]: no reply; the server faults (the shell's `fault echo`).
//! - any other label: the reply is `Error::UnknownLabel`.
//!
//! It registers its endpoint with the name service as [`NAME`], then logs one line
//! through the serial server (`log`, see [`crate::serial::install_logger`]) if it finds
//! one.

use keel_rt::println;
use keel_rt::protocol::{self, Answer, Error, Request, Service, Words};
use keel_sys::cap::{Cap, Endpoint};
use keel_sys::{Message, Received};

use crate::{StartInfo, names};

/// The name the echo server registers.
pub const NAME: &str = "echo";
/// Longest message echoed, in words.
pub const MAX_WORDS: usize = 32;
/// Request label: echo the words.
pub const ECHO: u64 = 1;
/// Request label that makes the server fault (an undefined instruction) instead of
/// answering: the default image's shell uses it to show init restarting a server.
pub const FAULT: u64 = 0xfa17_0000;

/// TSC ticks the server keeps asking for the serial server at start (about 50 ms at
/// 2.6 GHz).
const SERIAL_WAIT_TICKS: u64 = 1 << 27;

/// The echoed words.
pub type Echoed = Words<MAX_WORDS>;

/// The echo server's requests.
// A request lives on the stack for one Call: no need to box the words.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoRequest {
    /// Echo these words.
    Echo(Echoed),
    /// Fault.
    Fault,
}

impl Request for EchoRequest {
    type Reply = Echoed;

    fn encode(&self) -> Message {
        match self {
            Self::Echo(words) => words.to_message(ECHO),
            Self::Fault => Message::new(FAULT),
        }
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match message.label() {
            ECHO => Ok(Self::Echo(Words::from_message(message))),
            FAULT => Ok(Self::Fault),
            _ => Err(Error::UnknownLabel),
        }
    }
}

/// The server's state: none.
struct Echo;

impl Service for Echo {
    type Request = EchoRequest;

    fn handle(&mut self, request: EchoRequest, _badge: u64) -> Answer<Echoed> {
        match request {
            EchoRequest::Echo(words) => Answer::Now(Ok(words)),
            EchoRequest::Fault => {
                // The fault goes to init, which deletes this instance: no reply.
                keel_sys::probe::ud2();
                Answer::Later
            }
        }
    }
}

/// The server's thread: registers with the name service (when given one), then
/// answers requests forever.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let ep = Cap::<Endpoint>::from_cptr(start.serve);
    if start.names != 0
        && let Err(e) = names::register(Cap::from_cptr(start.names), NAME, ep)
    {
        println!("echo: cannot register: {e:?}");
        return;
    }
    // Log (and print) through the serial server when there is one (and a slot for its
    // endpoint). It may not have registered yet (it runs on another CPU): ask again for
    // a short while.
    let mut slots = start.slot_allocator();
    let find_serial = |slot| {
        let asked = keel_sys::rdtsc();
        loop {
            match names::lookup(
                Cap::from_cptr(start.names),
                crate::serial::NAME,
                start.cnode(),
                slot,
            ) {
                Err(Error::NotFound) if keel_sys::rdtsc() - asked < SERIAL_WAIT_TICKS => {
                    keel_sys::ipc::yield_now();
                }
                found => return found,
            }
        }
    };
    if start.names != 0
        && let Ok(slot) = slots.alloc()
        && let Ok(serial) = find_serial(slot)
    {
        crate::serial::install_logger(serial, log::LevelFilter::Info);
        log::info!("registered as '{NAME}'; answering calls");
    }
    protocol::serve(ep, &mut Echo)
}

/// Client side: sends `words` (cut to [`MAX_WORDS`]) and returns the echoed words.
pub fn call(server: Cap<Endpoint>, words: &[u64]) -> Result<Echoed, Error> {
    protocol::call(server, &EchoRequest::Echo(Words::new(words)))
}

/// Client side: asks the server to fault ([`FAULT`]). It is a Send, not a Call: a
/// caller waiting for the reply of a server that is deleted waits for ever (as in
/// seL4), and init deletes a faulted server to restart it.
pub fn request_fault(server: Cap<Endpoint>) {
    server.send(&EchoRequest::Fault.encode());
}

/// Client side for text: sends `text` (cut to what fits in [`MAX_WORDS`] words) and
/// reads the echoed text into `out`; returns the echoed bytes.
pub fn call_text<'a>(
    server: Cap<Endpoint>,
    text: &[u8],
    out: &'a mut [u8],
) -> Result<&'a [u8], Error> {
    let mut words = [0u64; MAX_WORDS];
    let count = crate::text_to_words(text, &mut words);
    let echoed = call(server, &words[..count])?;
    let echoed = echoed.as_slice();
    Ok(crate::text_from_words(
        |i| echoed.get(i).copied().unwrap_or(0),
        out,
    ))
}
