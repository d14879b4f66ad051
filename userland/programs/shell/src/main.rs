//! A tiny shell on the serial console, a server program of its own. It reads and
//! writes through the serial server (which owns COM1) and runs `help`, `echo`, `mem`,
//! `ps`, `caps`, `reboot` and `poweroff` (the last two through the power service). It
//! runs confined like any server: its capabilities are those of its own CSpace; `ps`,
//! `mem` and `caps` ask init (through the endpoint in
//! `keel_servers::cspace::slot::INIT`, `keel_servers::init_query`) what it started,
//! its memory totals and what the other CSpaces hold.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

keel_servers::server_program!(main);

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use keel_abi::object::cap_tag;
use keel_servers::cspace::slot;
use keel_servers::{StartInfo, names, serial};
use keel_sys::cap::{Cap, Endpoint, Unknown};

use keel_servers::init_query::{self, Handed, Role, SlotContents, State, ThreadInfo};
use keel_servers::power;

/// The serial server endpoint the shell writes to (0 until it has one).
static OUTPUT: AtomicU64 = AtomicU64::new(0);

/// Writes formatted text through the serial server, one request per call (so a line
/// printed with one `println!` is never split by other clients' output).
fn output(args: core::fmt::Arguments<'_>) {
    match OUTPUT.load(Ordering::Relaxed) {
        0 => keel_rt::print(args),
        server => {
            let mut writer = serial::Writer::new(Cap::from_cptr(server));
            let _ = writer.write_fmt(args);
            writer.flush();
        }
    }
}

/// `print!` through the serial server.
macro_rules! print {
    ($($arg:tt)*) => { output(format_args!($($arg)*)) };
}

/// `println!` through the serial server.
macro_rules! println {
    () => { print!("\n") };
    ($($arg:tt)*) => { output(format_args!("{}\n", format_args!($($arg)*))) };
}

/// The prompt.
pub const PROMPT: &str = "keel> ";
/// Label of the shell's echo requests.
const ECHO_LABEL: u64 = 0xec;

struct Shell {
    serial: Cap<Endpoint>,
    echo: Option<Cap<Endpoint>>,
    power: Option<Cap<Endpoint>>,
    timer: Option<Cap<Endpoint>>,
    /// The endpoint to ask init about other CSpaces.
    init: Option<Cap<Endpoint>>,
    /// Input read from the serial server and not used yet.
    input: [u8; serial::MAX_TEXT],
    input_start: usize,
    input_end: usize,
}

/// The shell's thread.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let mut slots = start.slot_allocator();
    let mut lookup = |name: &str| match (start.names, slots.alloc()) {
        (0, _) | (_, Err(_)) => None,
        (ns, Ok(slot)) => names::lookup(Cap::from_cptr(ns), name, start.cnode(), slot).ok(),
    };
    let Some(serial) = lookup(serial::NAME) else {
        keel_rt::println!("shell: no serial server; stopping");
        return;
    };
    OUTPUT.store(serial.cptr(), Ordering::Relaxed);
    let mut shell = Shell {
        serial,
        echo: lookup(keel_servers::echo::NAME),
        power: lookup(power::NAME),
        timer: lookup(keel_servers::timer::NAME),
        init: (Cap::<Unknown>::from_cptr(slot::INIT).identify() == cap_tag::ENDPOINT)
            .then(|| Cap::from_cptr(slot::INIT)),
        input: [0; serial::MAX_TEXT],
        input_start: 0,
        input_end: 0,
    };
    let mut line = [0u8; 128];
    let mut len = 0;
    print!("{PROMPT}");
    loop {
        let byte = shell.read_byte();
        match byte {
            b'\r' | b'\n' => {
                println!();
                shell.run(core::str::from_utf8(&line[..len]).unwrap_or(""));
                len = 0;
                print!("{PROMPT}");
            }
            0x08 | 0x7f if len > 0 => {
                len -= 1;
                print!("\x08 \x08");
            }
            b if (0x20..0x7f).contains(&b) && len < line.len() => {
                line[len] = b;
                len += 1;
                print!("{}", b as char);
            }
            _ => {}
        }
    }
}

impl Shell {
    /// The next byte typed: from what was read already, else from the serial server
    /// (which waits for input).
    fn read_byte(&mut self) -> u8 {
        while self.input_start == self.input_end {
            let mut buffer = [0u8; serial::MAX_TEXT];
            match serial::read(self.serial, &mut buffer) {
                Ok(bytes) => {
                    self.input[..bytes.len()].copy_from_slice(bytes);
                    self.input_start = 0;
                    self.input_end = bytes.len();
                }
                Err(status) => {
                    keel_rt::println!("shell: serial read failed: {status:?}");
                    keel_sys::ipc::yield_now();
                }
            }
        }
        let byte = self.input[self.input_start];
        self.input_start += 1;
        byte
    }

    fn run(&self, line: &str) {
        let line = line.trim();
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        match command {
            "" => {}
            "help" => {
                println!("commands:");
                println!("  help        this list");
                println!("  echo TEXT   send TEXT through the echo server and print its answer");
                println!("  mem         untyped memory from boot info");
                println!("  sleep MS    wait MS milliseconds (through the timer server)");
                println!("  ps          the threads init started: priority, CPU, state");
                println!("  caps NAME   what server NAME's own CSpace holds (asked of init)");
                println!("  fault NAME  make server NAME fault (echo only); init restarts it");
                println!("  reboot      restart the machine (through the power service)");
                println!("  poweroff    turn the machine off (ACPI S5, through the power service)");
            }
            "echo" => self.echo(rest.trim_start()),
            "mem" => self.mem(),
            "sleep" => self.sleep(rest.trim()),
            "ps" => self.ps(),
            "caps" => self.caps(rest.trim()),
            "fault" => self.fault(rest.trim()),
            "reboot" => self.power(power::RESTART),
            "poweroff" => self.power(power::POWER_OFF),
            other => println!("unknown command '{other}' (try help)"),
        }
    }

    fn echo(&self, text: &str) {
        let Some(server) = self.echo else {
            println!("{text} (echo server not found: printed locally)");
            return;
        };
        let mut out = [0u8; (keel_servers::echo::MAX_WORDS - 1) * 8];
        let answer = keel_servers::echo::call_text(server, ECHO_LABEL, text.as_bytes(), &mut out);
        println!("{}", core::str::from_utf8(answer).unwrap_or("(bad utf-8)"));
    }
}

impl Shell {
    fn power(&self, request: u64) {
        let Some(service) = self.power else {
            println!("no power service");
            return;
        };
        let status = if request == power::POWER_OFF {
            power::request_power_off(service)
        } else {
            power::request_restart(service)
        };
        println!("the machine is still running: {status:?}");
    }
}

impl Shell {
    /// The threads init started, in its order (its manifest's), as `(index, info)`.
    fn threads(&self) -> impl Iterator<Item = (usize, ThreadInfo)> + '_ {
        let init = self.init;
        (0..init_query::MAX_THREADS).map_while(move |i| {
            init.and_then(|init| init_query::thread(init, i))
                .map(|t| (i, t))
        })
    }

    /// `ps`: init first, then what init started, in start order.
    fn ps(&self) {
        let Some(init) = self.init else {
            println!("ps: the shell has no endpoint to init");
            return;
        };
        println!("NAME      PRIO  CPU  TCB   KIB USED/BUDGET  STATE");
        println!(
            "{:<8} {:>5} {:>4} {:>4}   {:<16} running (root task; receives faults)",
            "init",
            init_query::system(init).init_priority,
            0,
            keel_sys::cap::init::TCB.cptr(),
            "-"
        );
        for (_, t) in self.threads() {
            let state = t.state();
            if state == State::NotStarted {
                continue;
            }
            let memory = match (t.budget, t.used) {
                (0, _) => BudgetColumn(None),
                (budget, used) => BudgetColumn(Some((used >> 10, budget >> 10))),
            };
            print!(
                "{:<8} {:>5} {:>4} {:>4}   {:<16} ",
                t.name(),
                t.priority,
                t.cpu,
                t.tcb,
                memory,
            );
            match state {
                State::Faulted(label) => println!("faulted (fault label {label}), stopped"),
                _ if t.restarts > 0 => {
                    println!("running (restarted {} time(s))", t.restarts)
                }
                _ => println!("running"),
            }
        }
    }
}

impl Shell {
    /// `sleep MS`: waits through the timer server and says how many ticks passed.
    fn sleep(&self, ms: &str) {
        use keel_servers::timer;
        let (Some(server), Ok(ms)) = (self.timer, ms.parse::<u64>()) else {
            println!("usage: sleep MS (needs the timer server)");
            return;
        };
        match (timer::now(server), timer::sleep(server, ms)) {
            (Ok((before, _)), Ok(after)) => println!(
                "slept {ms} ms: {} ticks of {} ms",
                after - before,
                1000 / timer::TICK_HZ
            ),
            (now, slept) => println!("sleep failed: {now:?} {slept:?}"),
        }
    }

    /// `fault NAME`: asks the echo server to fault (its [`keel_servers::echo::FAULT`]
    /// request), to show init restarting it.
    fn fault(&self, name: &str) {
        match (name, self.echo) {
            (keel_servers::echo::NAME, Some(server)) => {
                // A Send: the server faults and no reply comes. init restarts it and
                // the new instance takes the next request on the same endpoint.
                keel_servers::echo::request_fault(server);
                println!("echo: asked to fault");
            }
            _ => println!("usage: fault echo"),
        }
    }

    /// `caps NAME`: the capabilities in a thread's own CSpace, each with its slot, the
    /// type the kernel reports for it now (init looks) and what init handed it for.
    fn caps(&self, name: &str) {
        if name == "init" {
            println!("init holds the root CNode: every capability in the system");
            return;
        }
        let Some(init) = self.init else {
            println!("caps: the shell has no endpoint to init");
            return;
        };
        let Some((index, thread)) = self.threads().find(|(_, t)| t.name() == name) else {
            println!("usage: caps NAME (one of: {})", Names(self));
            return;
        };
        let kind = |slot: u64| match init_query::identify(init, index, slot) {
            SlotContents::Tag(tag) => cap_tag::name(tag),
            SlotContents::Uncopyable => "reply",
            SlotContents::Unknown => "?",
        };
        let badge = index + 1;
        println!("caps of {name} (its own CSpace):");
        let mut handed_list = [Handed {
            cptr: 0,
            role: Role::Tcb,
        }; init_query::MAX_CAPS];
        let count = init_query::caps(init, index, &mut handed_list);
        for handed in &handed_list[..count] {
            match handed.role {
                Role::Slots(_) | Role::BoundNotification => {}
                _ => print!("  slot {:>4}  {:<12} ", handed.cptr, kind(handed.cptr)),
            }
            match handed.role {
                Role::Tcb => println!("its own TCB"),
                Role::CNode(radix) => println!("its own CNode, {} slots", 1u64 << radix),
                Role::Serve => println!("the endpoint it serves as '{}'", thread.serves()),
                Role::Names => println!("the name service, badge {badge}"),
                Role::Slots(count) => {
                    let used = (0..count as u64)
                        .filter(|i| kind(handed.cptr + i) != cap_tag::name(cap_tag::NULL))
                        .count();
                    println!(
                        "  slots {}-{}  {count} free slot(s) it may fill ({used} filled now)",
                        handed.cptr,
                        handed.cptr + count as u64 - 1
                    )
                }
                Role::IoPort(first, last) => println!("I/O ports {first:#x}-{last:#x}"),
                Role::Fault => println!("its fault endpoint, badge {badge} (init receives)"),
                Role::IrqHandler(irq) => println!("the handler of IRQ {irq}"),
                Role::Init => println!("init's question endpoint (for caps)"),
                Role::Untyped(bits) => println!(
                    "the rest of its memory budget, {} KiB",
                    (1u64 << bits) >> 10
                ),
                Role::BoundNotification => println!(
                    "  (not in its CSpace) the notification its IRQs signal, bound to its TCB"
                ),
            }
        }
    }
}

/// `ps`'s memory column: `used/budget` in KiB, or `-` (a thread of init's image,
/// whose memory is init's).
struct BudgetColumn(Option<(u64, u64)>);

impl core::fmt::Display for BudgetColumn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some((used, budget)) => f.pad(&short_text(format_args!("{used}/{budget}"))),
            None => f.pad("-"),
        }
    }
}

/// Formats `args` into a short fixed buffer (for padding).
fn short_text(args: core::fmt::Arguments<'_>) -> ShortText {
    let mut text = ShortText([0; 32], 0);
    let _ = text.write_fmt(args);
    text
}

/// Up to 32 bytes of text.
struct ShortText([u8; 32], usize);

impl core::fmt::Write for ShortText {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.0.len() - self.1);
        self.0[self.1..self.1 + n].copy_from_slice(&s.as_bytes()[..n]);
        self.1 += n;
        Ok(())
    }
}

impl core::ops::Deref for ShortText {
    type Target = str;
    fn deref(&self) -> &str {
        core::str::from_utf8(&self.0[..self.1]).unwrap_or("")
    }
}

/// The names `caps` accepts, for its usage line.
struct Names<'a>(&'a Shell);

impl core::fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("init")?;
        for (_, t) in self.0.threads() {
            write!(f, ", {}", t.name())?;
        }
        Ok(())
    }
}

impl Shell {
    /// `mem`: the untyped memory of the boot info, and what init had left once the
    /// boot-stage servers were up (asked of init).
    fn mem(&self) {
        let Some(init) = self.init else {
            println!("mem: the shell has no endpoint to init");
            return;
        };
        let m = init_query::system(init);
        println!(
            "untyped: {} KiB RAM in {} caps ({} KiB unused after boot), {} MiB device",
            m.ram >> 10,
            m.ram_caps,
            m.free >> 10,
            m.device >> 20,
        );
    }
}
