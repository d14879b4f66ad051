//! The serial server: owns COM1 (I/O ports `0x3f8..=0x3ff` and IRQ 4), buffers what
//! arrives by interrupt, and writes what its clients send, one request at a time so
//! that lines from different clients never mix. Its client side has a `log` backend
//! ([`install_logger`]) through which servers log whole lines.
//!
//! Capabilities: the endpoint it serves, the COM1 I/O port capability, and its slot
//! window, where init puts the IRQ 4 handler (first slot); the second slot holds the
//! reply capability of a waiting reader. The IRQ's notification, badged [`IRQ_BADGE`],
//! is bound to the server's TCB, so one `recv` on the endpoint waits for both requests
//! and interrupts.
//!
//! Protocol (Calls; text in the servers' encoding, `crate::text_to_words`):
//! - [`WRITE`]: text of up to [`MAX_TEXT`] bytes; written to COM1 before the reply.
//! - [`READ`]: the reply carries 1 to [`MAX_TEXT`] received bytes; it waits until there
//!   is at least one. One reader may wait at a time; another gets [`Status::Busy`].
//!
//! The reply label is a [`Status`].

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use keel_rt::{ROOT_DEPTH, println};
use keel_sys::cap::{CNode, Cap, Endpoint, IoPort, IrqHandler, Reply};
use keel_sys::{Message, Received};

use crate::{StartInfo, names};

/// The name the server registers.
pub const NAME: &str = "serial";
/// Request label: write text.
pub const WRITE: u64 = 1;
/// Request label: read what has arrived (waits for at least one byte).
pub const READ: u64 = 2;
/// COM1's ISA IRQ.
pub const IRQ: u8 = 4;
/// COM1's first and last I/O port.
pub const PORTS: (u16, u16) = (0x3f8, 0x3ff);
/// Badge of the IRQ notification bound to the server's TCB (client badges are small).
pub const IRQ_BADGE: u64 = 1 << 62;
/// Longest message, in words.
pub const MAX_WORDS: usize = 32;
/// Most bytes of text in one request or reply.
pub const MAX_TEXT: usize = (MAX_WORDS - 1) * 8;
/// Bytes of input the server keeps; more is dropped.
pub const INPUT_BUFFER: usize = 256;

/// COM1's registers, by offset from its base.
mod register {
    /// Receive buffer (read) / transmit holding (write).
    pub const DATA: u16 = 0;
    /// Interrupt enable.
    pub const INTERRUPT_ENABLE: u16 = 1;
    /// FIFO control (write).
    pub const FIFO_CONTROL: u16 = 2;
    /// Line status.
    pub const LINE_STATUS: u16 = 5;
}
/// Line status: a received byte is waiting.
const DATA_READY: u8 = 1 << 0;
/// Line status: the transmitter has room.
const TRANSMIT_EMPTY: u8 = 1 << 5;
/// Interrupt enable: received data available.
const RECEIVE_INTERRUPT: u64 = 1 << 0;
/// FIFO control: FIFOs on, interrupt at every byte (not cleared: the kernel set them up).
const FIFO_ONE_BYTE: u64 = 1 << 0;

/// Reply labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// Another reader is already waiting.
    Busy = 1,
    /// Unknown label or malformed text.
    BadRequest = 2,
    /// The port refused an access (the server lacks the I/O port capability).
    PortError = 3,
}

impl Status {
    fn from_label(label: u64) -> Self {
        match label {
            0 => Self::Ok,
            1 => Self::Busy,
            3 => Self::PortError,
            _ => Self::BadRequest,
        }
    }
}

/// Received bytes not read yet.
struct Input {
    bytes: [u8; INPUT_BUFFER],
    start: usize,
    len: usize,
    dropped: u64,
}

impl Input {
    fn push(&mut self, byte: u8) {
        if self.len == INPUT_BUFFER {
            self.dropped += 1;
            return;
        }
        self.bytes[(self.start + self.len) % INPUT_BUFFER] = byte;
        self.len += 1;
    }

    /// A reply with up to [`MAX_TEXT`] buffered bytes.
    fn take(&mut self) -> Message {
        let mut text = [0u8; MAX_TEXT];
        let count = self.len.min(MAX_TEXT);
        for byte in &mut text[..count] {
            *byte = self.bytes[self.start];
            self.start = (self.start + 1) % INPUT_BUFFER;
            self.len -= 1;
        }
        text_message(Status::Ok as u64, &text[..count])
    }
}

fn text_message(label: u64, text: &[u8]) -> Message {
    let mut words = [0u64; MAX_WORDS];
    let count = crate::text_to_words(text, &mut words);
    Message::new(label).words(&words[..count])
}

struct Server {
    /// The server's own CNode (for SaveCaller).
    cnode: Cap<CNode>,
    port: Cap<IoPort>,
    irq: Cap<IrqHandler>,
    /// Where a waiting reader's reply capability is saved.
    reader_slot: u64,
    reader_waiting: bool,
    input: Input,
}

/// The server's thread.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let ep = Cap::<Endpoint>::from_cptr(start.serve);
    if start.slot_count < 2 {
        println!("serial: needs two slots (IRQ handler, saved reader)");
        return;
    }
    let mut server = Server {
        cnode: start.cnode(),
        port: Cap::from_cptr(start.io_port),
        irq: Cap::from_cptr(start.slots),
        reader_slot: start.slots + 1,
        reader_waiting: false,
        input: Input {
            bytes: [0; INPUT_BUFFER],
            start: 0,
            len: 0,
            dropped: 0,
        },
    };
    let base = PORTS.0;
    let setup = server
        .port
        .out8((base + register::FIFO_CONTROL) as u64, FIFO_ONE_BYTE)
        .and_then(|()| {
            server.port.out8(
                (base + register::INTERRUPT_ENABLE) as u64,
                RECEIVE_INTERRUPT,
            )
        })
        .and_then(|()| server.irq.ack());
    if let Err(e) = setup {
        println!("serial: cannot set COM1 up: {e:?}");
        return;
    }
    if start.names != 0
        && let Err(e) = names::register(Cap::from_cptr(start.names), NAME, ep)
    {
        println!("serial: cannot register: {e:?}");
        return;
    }
    // Bytes that arrived before the interrupt was on.
    server.drain();
    let mut request = ep.recv();
    loop {
        request = match server.handle(&request) {
            Some(reply) => ep.reply_recv(&reply),
            None => ep.recv(),
        };
    }
}

impl Server {
    /// The reply to a request, or `None` when there is no one to reply to now (an
    /// interrupt, or a reader that waits).
    fn handle(&mut self, request: &Received) -> Option<Message> {
        if request.badge & IRQ_BADGE != 0 {
            self.drain();
            let _ = self.irq.ack();
            return None;
        }
        match request.label() {
            WRITE => {
                let mut text = [0u8; MAX_TEXT];
                let text = crate::text_from_words(|i| request.mr(i), &mut text);
                Some(Message::new(self.write(text) as u64))
            }
            READ if self.input.len > 0 => Some(self.input.take()),
            READ if self.reader_waiting => Some(Message::new(Status::Busy as u64)),
            READ => {
                match self.cnode.save_caller(self.reader_slot, ROOT_DEPTH) {
                    Ok(()) => self.reader_waiting = true,
                    Err(_) => return Some(Message::new(Status::BadRequest as u64)),
                }
                None
            }
            _ => Some(Message::new(Status::BadRequest as u64)),
        }
    }

    /// Moves every received byte into the buffer, and answers a waiting reader.
    fn drain(&mut self) {
        let base = PORTS.0;
        while let Ok(status) = self.port.in8(base + register::LINE_STATUS)
            && status & DATA_READY != 0
        {
            if !self.receive() {
                break;
            }
        }
        self.answer_reader();
    }

    /// Moves one received byte into the buffer; false if the port refused.
    fn receive(&mut self) -> bool {
        match self.port.in8(PORTS.0 + register::DATA) {
            Ok(byte) => {
                self.input.push(byte);
                true
            }
            Err(_) => false,
        }
    }

    /// Replies to the waiting reader, if there is one and there is input.
    fn answer_reader(&mut self) {
        if self.reader_waiting && self.input.len > 0 {
            self.reader_waiting = false;
            Cap::<Reply>::from_cptr(self.reader_slot).send(&self.input.take());
        }
    }

    /// Writes `text`, taking in received bytes on the way so that the UART's 16-byte
    /// receive FIFO does not overflow during a long write.
    fn write(&mut self, text: &[u8]) -> Status {
        let base = PORTS.0;
        for &byte in text {
            // Bounded wait for room, so a dead UART cannot stop the server.
            for _ in 0..10_000 {
                match self.port.in8(base + register::LINE_STATUS) {
                    Ok(status) if status & DATA_READY != 0 => {
                        self.receive();
                    }
                    Ok(status) if status & TRANSMIT_EMPTY != 0 => break,
                    Ok(_) => {}
                    Err(_) => return Status::PortError,
                }
            }
            if self
                .port
                .out8((base + register::DATA) as u64, byte as u64)
                .is_err()
            {
                return Status::PortError;
            }
        }
        // What arrived during the write (in loopback: the write itself).
        self.drain();
        Status::Ok
    }
}

/// Client side: writes `text` (in pieces of [`MAX_TEXT`] bytes; each piece is written
/// whole, without other clients' output inside it).
pub fn write(server: Cap<Endpoint>, text: &[u8]) -> Status {
    for piece in text.chunks(MAX_TEXT) {
        let reply = server.call(&text_message(WRITE, piece));
        let status = Status::from_label(reply.label());
        if status != Status::Ok {
            return status;
        }
    }
    Status::Ok
}

/// Client side: waits for input and reads it into `out`; returns the bytes read. A reply
/// carries up to [`MAX_TEXT`] bytes; what does not fit in a shorter `out` is lost.
pub fn read(server: Cap<Endpoint>, out: &mut [u8]) -> Result<&[u8], Status> {
    let reply = server.call(&Message::new(READ));
    match Status::from_label(reply.label()) {
        Status::Ok => Ok(crate::text_from_words(|i| reply.mr(i), out)),
        status => Err(status),
    }
}

/// A `core::fmt::Write` that collects text and sends it to the serial server in one
/// request per [`MAX_TEXT`] bytes (or at [`Writer::flush`]).
pub struct Writer {
    server: Cap<Endpoint>,
    buffer: [u8; MAX_TEXT],
    len: usize,
}

impl Writer {
    /// A writer to `server`.
    pub const fn new(server: Cap<Endpoint>) -> Self {
        Self {
            server,
            buffer: [0; MAX_TEXT],
            len: 0,
        }
    }

    /// Sends what was collected.
    pub fn flush(&mut self) -> Status {
        let status = write(self.server, &self.buffer[..self.len]);
        self.len = 0;
        status
    }
}

impl core::fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == MAX_TEXT {
                self.flush();
            }
            self.buffer[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// The serial endpoint of the `log` backend (0 until [`install_logger`]).
static LOG_SERVER: AtomicU64 = AtomicU64::new(0);

/// The `log` backend: each record becomes one line, `LEVEL target: message`, sent to
/// the serial server as one request (cut at [`MAX_TEXT`] bytes), so lines from
/// different servers never mix.
struct SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        LOG_SERVER.load(Ordering::Relaxed) != 0
    }

    fn log(&self, record: &log::Record<'_>) {
        let server = LOG_SERVER.load(Ordering::Relaxed);
        if server == 0 {
            return;
        }
        let mut line = Line {
            bytes: [0; MAX_TEXT],
            len: 0,
        };
        let target = record.target().rsplit("::").next().unwrap_or("");
        let _ = write!(line, "{:<5} {target}: {}", record.level(), record.args());
        line.bytes[line.len] = b'\n';
        write(Cap::from_cptr(server), &line.bytes[..line.len + 1]);
    }

    fn flush(&self) {}
}

/// One log line, cut to leave room for its newline in one request.
struct Line {
    bytes: [u8; MAX_TEXT],
    len: usize,
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = MAX_TEXT - 1 - self.len;
        let take = s.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

static LOGGER: SerialLogger = SerialLogger;

/// Stops sending `log` records anywhere (they are dropped until the next
/// [`install_logger`]).
pub fn remove_logger() {
    LOG_SERVER.store(0, Ordering::Relaxed);
}

/// Sends `log` records to the serial server `server` from now on, at `level` and
/// above. Every thread of the image shares the logger (the servers share init's image),
/// so the first call sets it up and later ones only change the endpoint and level.
pub fn install_logger(server: Cap<Endpoint>, level: log::LevelFilter) {
    LOG_SERVER.store(server.cptr(), Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
