//! The echo server: the smallest complete server, and the template for new ones.
//!
//! Protocol: a Call with any label and up to [`MAX_WORDS`] words is answered with the
//! same label and words (longer messages are cut to [`MAX_WORDS`]). It registers its
//! endpoint with the name service as [`NAME`], then logs one line through the serial
//! server (`log`, see [`crate::serial::install_logger`]) if it finds one.

use keel_rt::println;
use keel_sys::cap::{Cap, Endpoint};
use keel_sys::{Message, Received};

use crate::{StartInfo, names};

/// The name the echo server registers.
pub const NAME: &str = "echo";
/// Longest message echoed, in words.
pub const MAX_WORDS: usize = 32;
/// Request label that makes the server fault (an undefined instruction) instead of
/// answering: the default image's shell uses it to show init restarting a server.
pub const FAULT: u64 = 0xfa17_0000;

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
    // Log through the serial server when there is one (and a slot for its endpoint).
    let mut slots = start.slot_allocator();
    if start.names != 0
        && let Ok(slot) = slots.alloc()
        && let Ok(serial) = names::lookup(
            Cap::from_cptr(start.names),
            crate::serial::NAME,
            start.cnode(),
            slot,
        )
    {
        crate::serial::install_logger(serial, log::LevelFilter::Info);
        log::info!("registered as '{NAME}'; answering calls");
    }
    let mut request = ep.recv();
    loop {
        if request.label() == FAULT {
            keel_sys::probe::ud2();
        }
        request = ep.reply_recv(&answer(&request));
    }
}

/// The reply to one request.
fn answer(request: &Received) -> Message {
    let mut reply = Message::new(request.label());
    for i in 0..request.length().min(MAX_WORDS) {
        reply.push_word(request.mr(i));
    }
    reply
}

/// Client side: sends `words` with `label` and returns the reply.
pub fn call(server: Cap<Endpoint>, label: u64, words: &[u64]) -> Received {
    server.call(&Message::new(label).words(words))
}

/// Client side: asks the server to fault ([`FAULT`]). It is a Send, not a Call: a
/// caller waiting for the reply of a server that is deleted waits for ever (as in
/// seL4), and init deletes a faulted server to restart it.
pub fn request_fault(server: Cap<Endpoint>) {
    server.send(&Message::new(FAULT));
}

/// Client side for text: sends `text` (cut to what fits in [`MAX_WORDS`] words) and
/// reads the echoed text into `out`; returns the echoed bytes.
pub fn call_text<'a>(
    server: Cap<Endpoint>,
    label: u64,
    text: &[u8],
    out: &'a mut [u8],
) -> &'a [u8] {
    let mut words = [0u64; MAX_WORDS];
    let count = crate::text_to_words(text, &mut words);
    let reply = call(server, label, &words[..count]);
    crate::text_from_words(|i| reply.mr(i), out)
}
