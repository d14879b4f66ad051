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
//! Protocol ([`SerialRequest`], with the runtime's typed IPC, `keel_rt::protocol`; text
//! in the servers' encoding, `crate::text_to_words`):
//! - [`WRITE`]: text of up to [`MAX_TEXT`] bytes; written to COM1 before the reply.
//! - [`READ`]: the reply carries 1 to [`MAX_TEXT`] received bytes; it waits until there
//!   is at least one. One reader may wait at a time; another gets `Error::Busy`.
//!
//! [`install_console`] sends a thread's `print!` output (`keel_rt`'s console) through
//! the server too.

use core::fmt::Write as _;

use keel_rt::protocol::{self, Answer, Error, Request, Service};
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

/// Up to [`MAX_TEXT`] bytes of text: a WRITE's request, a READ's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Text {
    bytes: [u8; MAX_TEXT],
    len: usize,
}

impl Text {
    /// The first [`MAX_TEXT`] bytes of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        let len = bytes.len().min(MAX_TEXT);
        let mut all = [0; MAX_TEXT];
        all[..len].copy_from_slice(&bytes[..len]);
        Self { bytes: all, len }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn message(&self, label: u64) -> Message {
        let mut words = [0u64; MAX_WORDS];
        let count = crate::text_to_words(self.as_bytes(), &mut words);
        Message::new(label).words(&words[..count])
    }

    fn from_message(message: &Received) -> Self {
        let mut text = Self::new(&[]);
        text.len = crate::text_from_words(|i| message.mr(i), &mut text.bytes).len();
        text
    }
}

impl protocol::Reply for Text {
    fn encode(&self) -> Message {
        self.message(protocol::OK)
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        Ok(Self::from_message(message))
    }
}

/// The serial server's requests.
// A request lives on the stack for one Call: no need to box the text.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerialRequest {
    /// Write the text (the reply is empty text).
    Write(Text),
    /// Read what has arrived.
    Read,
}

impl Request for SerialRequest {
    type Reply = Text;

    fn encode(&self) -> Message {
        match self {
            Self::Write(text) => text.message(WRITE),
            Self::Read => Message::new(READ),
        }
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match message.label() {
            WRITE if message.length() >= 1 && message.length() <= MAX_WORDS => {
                Ok(Self::Write(Text::from_message(message)))
            }
            WRITE => Err(Error::BadRequest),
            READ => Ok(Self::Read),
            _ => Err(Error::UnknownLabel),
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

    /// Up to [`MAX_TEXT`] buffered bytes.
    fn take(&mut self) -> Text {
        let mut text = Text::new(&[]);
        text.len = self.len.min(MAX_TEXT);
        for byte in &mut text.bytes[..text.len] {
            *byte = self.bytes[self.start];
            self.start = (self.start + 1) % INPUT_BUFFER;
            self.len -= 1;
        }
        text
    }
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
    protocol::serve(ep, &mut server)
}

impl Service for Server {
    type Request = SerialRequest;
    const NOTIFICATION_BADGE: u64 = IRQ_BADGE;

    /// A reply now, or later: a reader waits for input.
    fn handle(&mut self, request: SerialRequest, _badge: u64) -> Answer<Text> {
        match request {
            SerialRequest::Write(text) => {
                self.write(text.as_bytes()).map(|()| Text::new(&[])).into()
            }
            SerialRequest::Read if self.input.len > 0 => Answer::Now(Ok(self.input.take())),
            SerialRequest::Read if self.reader_waiting => Answer::Now(Err(Error::Busy)),
            SerialRequest::Read => match self.cnode.save_caller(self.reader_slot, ROOT_DEPTH) {
                Ok(()) => {
                    self.reader_waiting = true;
                    Answer::Later
                }
                Err(_) => Answer::Now(Err(Error::BadRequest)),
            },
        }
    }

    /// The interrupt: take the received bytes in.
    fn notified(&mut self, _badge: u64) {
        self.drain();
        let _ = self.irq.ack();
    }
}

impl Server {
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
            let text = self.input.take();
            Cap::<Reply>::from_cptr(self.reader_slot).send(&protocol::reply_message(&Ok(text)));
        }
    }

    /// Writes `text`, taking in received bytes on the way so that the UART's 16-byte
    /// receive FIFO does not overflow during a long write.
    fn write(&mut self, text: &[u8]) -> Result<(), Error> {
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
                    Err(_) => return Err(Error::PortRefused),
                }
            }
            if self
                .port
                .out8((base + register::DATA) as u64, byte as u64)
                .is_err()
            {
                return Err(Error::PortRefused);
            }
        }
        // What arrived during the write (in loopback: the write itself).
        self.drain();
        Ok(())
    }
}

/// Client side: writes `text` (in pieces of [`MAX_TEXT`] bytes; each piece is written
/// whole, without other clients' output inside it).
pub fn write(server: Cap<Endpoint>, text: &[u8]) -> Result<(), Error> {
    for piece in text.chunks(MAX_TEXT) {
        protocol::call(server, &SerialRequest::Write(Text::new(piece)))?;
    }
    Ok(())
}

/// Client side: waits for input and reads it into `out`; returns the bytes read. A reply
/// carries up to [`MAX_TEXT`] bytes; what does not fit in a shorter `out` is lost.
pub fn read(server: Cap<Endpoint>, out: &mut [u8]) -> Result<&[u8], Error> {
    let text = protocol::call(server, &SerialRequest::Read)?;
    let count = text.len.min(out.len());
    out[..count].copy_from_slice(&text.bytes[..count]);
    Ok(&out[..count])
}

/// Sends the calling thread's console output (`keel_rt::print!`, `println!`, panic
/// messages) through the serial server `server` from now on: one WRITE per `print!`
/// (per 256 bytes), so its lines never mix with other clients' output.
pub fn install_console(server: Cap<Endpoint>) {
    keel_rt::set_console(server.cptr(), |endpoint, bytes| {
        write(Cap::from_cptr(endpoint), bytes).is_ok()
    });
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
    pub fn flush(&mut self) -> Result<(), Error> {
        let status = write(self.server, &self.buffer[..self.len]);
        self.len = 0;
        status
    }
}

impl core::fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == MAX_TEXT {
                let _ = self.flush();
            }
            self.buffer[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// The `log` backend: each record becomes one line, `LEVEL target: message`, printed
/// on the logging thread's console (cut at [`MAX_TEXT`] bytes) in one piece: through
/// the serial server as one request once the thread has [`install_logger`]ed, so lines
/// from different servers never mix. Records of threads that have not are dropped.
struct SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        keel_rt::console_is_serial()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = Line {
            bytes: [0; MAX_TEXT],
            len: 0,
        };
        let target = record.target().rsplit("::").next().unwrap_or("");
        let _ = write!(line, "{:<5} {target}: {}", record.level(), record.args());
        line.bytes[line.len] = b'\n';
        let text = core::str::from_utf8(&line.bytes[..line.len + 1]).unwrap_or("(bad utf-8)\n");
        keel_rt::print!("{text}");
    }

    fn flush(&self) {}
}

/// One log line, cut (at a character boundary) to leave room for its newline in one
/// request.
struct Line {
    bytes: [u8; MAX_TEXT],
    len: usize,
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = MAX_TEXT - 1 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

static LOGGER: SerialLogger = SerialLogger;

/// Stops sending the calling thread's `log` records (they are dropped) and its console
/// output (it goes to the kernel console again) to the serial server.
pub fn remove_logger() {
    keel_rt::reset_console();
}

/// Sends the calling thread's `log` records, at `level` and above, and its console
/// output ([`install_console`]) to the serial server `server` from now on. The
/// endpoint is the calling thread's (a capability pointer in its own CSpace); the level
/// is the program's (every thread of an image shares the `log` crate's state).
pub fn install_logger(server: Cap<Endpoint>, level: log::LevelFilter) {
    install_console(server);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
