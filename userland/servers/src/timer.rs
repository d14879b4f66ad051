//! The timer server: owns the PIT (I/O ports `0x40..=0x43` and ISA IRQ 0), runs its
//! channel 0 as a rate generator at [`TICK_HZ`], counts the ticks, and answers
//! `sleep` requests when their time has come.
//!
//! Capabilities: the endpoint it serves, the PIT's I/O port capability, and its window
//! of free slots: the first holds the IRQ 0 handler (init puts it there), the others
//! hold the saved reply capabilities of waiting sleepers, one each. The IRQ's
//! notification, badged [`IRQ_BADGE`], is bound to the server's TCB, so one `recv` on
//! the endpoint waits for both requests and ticks.
//!
//! Invariant: a sleeper is answered at the first tick at or after its deadline, and
//! its deadline is at least the requested time after the request (one tick is added
//! for the tick already under way), so a sleep never ends early.
//!
//! Protocol ([`TimerRequest`], with the runtime's typed IPC, `keel_rt::protocol`):
//! - [`SLEEP`]: word 0 milliseconds; the reply comes when they have passed, with the
//!   tick count in word 0. With no free slot for another sleeper: `Error::Busy`.
//! - [`NOW`]: the reply carries the tick count (word 0) and the milliseconds since the
//!   server started (word 1).

use keel_rt::protocol::{self, Answer, Error, Request, Service};
use keel_rt::{ROOT_DEPTH, println};
use keel_sys::cap::{CNode, Cap, Endpoint, IoPort, IrqHandler, Reply};
use keel_sys::{Message, Received};

use crate::{StartInfo, names};

/// The name the server registers.
pub const NAME: &str = "timer";
/// Request label: sleep for word 0 milliseconds.
pub const SLEEP: u64 = 1;
/// Request label: the current tick count and milliseconds.
pub const NOW: u64 = 2;
/// The PIT's ISA IRQ (the firmware usually routes it to GSI 2; the kernel follows the
/// ACPI override).
pub const IRQ: u8 = 0;
/// The PIT's ports: channels 0 to 2 (0x40-0x42) and the mode/command register (0x43).
pub const PORTS: (u16, u16) = (0x40, 0x43);
/// Badge of the IRQ notification bound to the server's TCB (client badges are small).
pub const IRQ_BADGE: u64 = crate::serial::IRQ_BADGE;
/// Ticks per second.
pub const TICK_HZ: u64 = 100;
/// The PIT's input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Most sleepers waiting at once (the window may hold fewer).
pub const MAX_SLEEPERS: usize = 16;

/// Port of channel 0's counter.
const CHANNEL_0: u16 = 0x40;
/// Port of the mode/command register.
const COMMAND: u16 = 0x43;
/// Command: channel 0, low byte then high byte, mode 2 (rate generator), binary.
const CHANNEL_0_RATE_GENERATOR: u64 = 0b0011_0100;

/// The timer server's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerRequest {
    /// Sleep this many milliseconds.
    Sleep(u64),
    /// The time now.
    Now,
}

/// The time in a reply: the tick count and the milliseconds since the server started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time {
    /// Ticks of [`TICK_HZ`] since the server started.
    pub ticks: u64,
    /// The same in milliseconds.
    pub ms: u64,
}

impl Request for TimerRequest {
    type Reply = Time;

    fn encode(&self) -> Message {
        match *self {
            Self::Sleep(ms) => Message::new(SLEEP).word(ms),
            Self::Now => Message::new(NOW),
        }
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match message.label() {
            SLEEP if message.length() >= 1 => Ok(Self::Sleep(message.mr(0))),
            SLEEP => Err(Error::BadRequest),
            NOW => Ok(Self::Now),
            _ => Err(Error::UnknownLabel),
        }
    }
}

impl protocol::Reply for Time {
    fn encode(&self) -> Message {
        Message::new(protocol::OK).words(&[self.ticks, self.ms])
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        if message.length() < 2 {
            return Err(Error::BadReply);
        }
        Ok(Self {
            ticks: message.mr(0),
            ms: message.mr(1),
        })
    }
}

/// A waiting sleeper: its deadline tick and the slot of its saved reply capability.
#[derive(Clone, Copy, Debug)]
struct Sleeper {
    deadline: u64,
    slot: u64,
}

struct Server {
    cnode: Cap<CNode>,
    irq: Cap<IrqHandler>,
    ticks: u64,
    /// Slots for saved reply capabilities: `free_slots[..free_count]` are empty.
    free_slots: [u64; MAX_SLEEPERS],
    free_count: usize,
    sleepers: [Option<Sleeper>; MAX_SLEEPERS],
}

/// Ticks to wait for `ms` milliseconds: rounded up, plus the tick under way.
pub fn ticks_for(ms: u64) -> u64 {
    (ms * TICK_HZ).div_ceil(1000) + 1
}

/// The server's thread.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let ep = Cap::<Endpoint>::from_cptr(start.serve);
    if start.slot_count < 2 {
        println!("timer: needs two slots (IRQ handler, a sleeper)");
        return;
    }
    let mut server = Server {
        cnode: start.cnode(),
        irq: Cap::from_cptr(start.slots),
        ticks: 0,
        free_slots: [0; MAX_SLEEPERS],
        free_count: 0,
        sleepers: [None; MAX_SLEEPERS],
    };
    for slot in start.slots + 1..start.slots + start.slot_count {
        if server.free_count < MAX_SLEEPERS {
            server.free_slots[server.free_count] = slot;
            server.free_count += 1;
        }
    }
    let port = Cap::<IoPort>::from_cptr(start.io_port);
    let divisor = PIT_HZ / TICK_HZ;
    let setup = port
        .out8(COMMAND as u64, CHANNEL_0_RATE_GENERATOR)
        .and_then(|()| port.out8(CHANNEL_0 as u64, divisor & 0xff))
        .and_then(|()| port.out8(CHANNEL_0 as u64, divisor >> 8))
        .and_then(|()| server.irq.ack());
    if let Err(e) = setup {
        println!("timer: cannot set the PIT up: {e:?}");
        return;
    }
    if start.names != 0
        && let Err(e) = names::register(Cap::from_cptr(start.names), NAME, ep)
    {
        println!("timer: cannot register: {e:?}");
        return;
    }
    protocol::serve(ep, &mut server)
}

impl Service for Server {
    type Request = TimerRequest;
    const NOTIFICATION_BADGE: u64 = IRQ_BADGE;

    /// A reply now, or later: a sleeper waits for its deadline.
    fn handle(&mut self, request: TimerRequest, _badge: u64) -> Answer<Time> {
        match request {
            TimerRequest::Sleep(0) | TimerRequest::Now => Answer::Now(Ok(self.now())),
            TimerRequest::Sleep(ms) => self.sleep(ms),
        }
    }

    fn notified(&mut self, _badge: u64) {
        self.tick();
    }
}

impl Server {
    fn now(&self) -> Time {
        Time {
            ticks: self.ticks,
            ms: self.ticks * 1000 / TICK_HZ,
        }
    }

    /// Saves the caller as a sleeper (it waits), or refuses it.
    fn sleep(&mut self, ms: u64) -> Answer<Time> {
        let Some(entry) = self.sleepers.iter().position(Option::is_none) else {
            return Answer::Now(Err(Error::Busy));
        };
        if self.free_count == 0 {
            return Answer::Now(Err(Error::Busy));
        }
        let slot = self.free_slots[self.free_count - 1];
        if self.cnode.save_caller(slot, ROOT_DEPTH).is_err() {
            return Answer::Now(Err(Error::BadRequest));
        }
        self.free_count -= 1;
        self.sleepers[entry] = Some(Sleeper {
            deadline: self.ticks + ticks_for(ms),
            slot,
        });
        Answer::Later
    }

    /// One tick: count it, ack the IRQ, answer every sleeper whose time has come.
    fn tick(&mut self) {
        self.ticks += 1;
        let _ = self.irq.ack();
        let reply = protocol::reply_message(&Ok(self.now()));
        for entry in self.sleepers.iter_mut() {
            if let Some(sleeper) = *entry
                && sleeper.deadline <= self.ticks
            {
                Cap::<Reply>::from_cptr(sleeper.slot).send(&reply);
                self.free_slots[self.free_count] = sleeper.slot;
                self.free_count += 1;
                *entry = None;
            }
        }
    }
}

/// Client side: sleeps for `ms` milliseconds; returns the server's tick count at the
/// wake-up.
pub fn sleep(server: Cap<Endpoint>, ms: u64) -> Result<u64, Error> {
    protocol::call(server, &TimerRequest::Sleep(ms)).map(|time| time.ticks)
}

/// Client side: the server's tick count and milliseconds since it started.
pub fn now(server: Cap<Endpoint>) -> Result<(u64, u64), Error> {
    protocol::call(server, &TimerRequest::Now).map(|time| (time.ticks, time.ms))
}
