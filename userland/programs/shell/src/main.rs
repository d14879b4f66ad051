//! A tiny shell on the serial console, a server program of its own. It reads and
//! writes through the serial server (which owns COM1; its console is the serial
//! server, `serial::install_console`) and runs `help`, `echo`, `mem`, `sleep`, `ps`,
//! `caps`, `fault`, `test` (a self-test of the running system), `bench` (an IPC
//! round-trip benchmark), `reboot` and `poweroff` (the last two through the power
//! service). It runs confined like any server: its capabilities are those of its own
//! CSpace; `ps`, `mem` and `caps` ask init (through the endpoint in
//! `keel_servers::cspace::slot::INIT`, `keel_servers::init_query`) what it started,
//! its memory totals and what the other CSpaces hold.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

keel_servers::server_program!(main);

use core::fmt::Write as _;

use keel_abi::object::cap_tag;
use keel_rt::{ROOT_DEPTH, print, println};
use keel_servers::cspace::slot;
use keel_servers::{StartInfo, names, serial};
use keel_sys::cap::{CNode, Cap, Endpoint, Unknown};

use keel_servers::init_query::{self, Handed, Role, SlotContents, State, ThreadInfo};
use keel_servers::power;

/// The prompt.
pub const PROMPT: &str = "keel> ";

struct Shell {
    /// Its own CNode and its badged capability to the name service.
    cnode: Cap<CNode>,
    names: Cap<Endpoint>,
    /// A free slot for what `test` looks up (0: none left).
    scratch: u64,
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
    let mut lookup = |name: &str| start.look_up(&mut slots, name);
    let Some(serial) = lookup(serial::NAME) else {
        println!("shell: no serial server; stopping");
        return;
    };
    // From here on, print! and println! are WRITEs to the serial server.
    serial::install_console(serial);
    let echo = lookup(keel_servers::echo::NAME);
    let power = lookup(power::NAME);
    let timer = lookup(keel_servers::timer::NAME);
    let mut shell = Shell {
        cnode: start.cnode(),
        names: Cap::from_cptr(start.names),
        scratch: slots.alloc().unwrap_or(0),
        serial,
        echo,
        power,
        timer,
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
                Err(error) => {
                    println!("shell: serial read failed: {error:?}");
                    keel_sys::ipc::yield_now();
                }
            }
        }
        let byte = self.input[self.input_start];
        self.input_start += 1;
        byte
    }

    fn run(&mut self, line: &str) {
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
                println!("  test        self-test of the running system (servers, IPC, heap)");
                println!(
                    "  bench       IPC benchmark: round trips to the echo server, cycles per call"
                );
                println!("  reboot      restart the machine (through the power service)");
                println!("  poweroff    turn the machine off (ACPI S5, through the power service)");
            }
            "echo" => self.echo(rest.trim_start()),
            "mem" => self.mem(),
            "sleep" => self.sleep(rest.trim()),
            "ps" => self.ps(),
            "caps" => self.caps(rest.trim()),
            "fault" => self.fault(rest.trim()),
            "test" => self.self_test(),
            "bench" => self.bench(),
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
        match keel_servers::echo::call_text(server, text.as_bytes(), &mut out) {
            Ok(answer) => println!("{}", core::str::from_utf8(answer).unwrap_or("(bad utf-8)")),
            Err(e) => println!("echo failed: {e:?}"),
        }
    }
}

impl Shell {
    fn power(&self, request: u64) {
        let Some(service) = self.power else {
            println!("no power service");
            return;
        };
        let error = if request == power::POWER_OFF {
            power::request_power_off(service)
        } else {
            power::request_restart(service)
        };
        println!("the machine is still running: {error:?}");
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
                State::Exited => println!("exited"),
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

/// One self-test's outcome: `Err` says what went wrong.
type Check = Result<(), alloc::string::String>;

/// One self-test.
type SelfTest = fn(&mut Shell) -> Check;

/// `Err(format!(...))` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(alloc::format!($($arg)*));
        }
    };
}

/// Calls `server` with a label no protocol has (and one word) and checks that the
/// answer is the typed error `UnknownLabel`.
fn unknown_label_refused(server: Cap<Endpoint>) -> Check {
    let reply = server.call(&keel_sys::Message::new(0x7e57).word(1));
    let result = keel_rt::protocol::decode_reply::<()>(&reply);
    ensure!(
        result == Err(keel_rt::protocol::Error::UnknownLabel),
        "label 0x7e57 got {result:?}"
    );
    Ok(())
}

/// Round trips per `bench` run.
pub const BENCH_CALLS: u64 = 1000;
/// `bench` runs; it prints the median.
pub const BENCH_RUNS: usize = 5;

impl Shell {
    /// `test`: checks the running system through the same calls its clients make, and
    /// prints `test NAME ... ok` or `... FAIL: why` for each, then the counts.
    fn self_test(&mut self) {
        let checks: [(&str, SelfTest); 8] = [
            ("names_lookup_finds_echo", Shell::test_lookup),
            ("names_unknown_name_not_found", Shell::test_unknown_name),
            ("echo_round_trips", Shell::test_echo),
            ("echo_unknown_label_typed_error", Shell::test_unknown_label),
            ("timer_sleeps_in_order", Shell::test_timer),
            ("serial_write_and_unknown_label", Shell::test_serial),
            ("power_unknown_label_typed_error", Shell::test_power),
            ("heap_collections", Shell::test_heap),
        ];
        let (mut passed, mut failed) = (0, 0);
        for (name, check) in checks {
            match check(self) {
                Ok(()) => {
                    passed += 1;
                    println!("test {name} ... ok");
                }
                Err(why) => {
                    failed += 1;
                    println!("test {name} ... FAIL: {why}");
                }
            }
        }
        println!("test: {passed} passed, {failed} failed");
    }

    fn echo_server(&self) -> Result<Cap<Endpoint>, alloc::string::String> {
        self.echo.ok_or_else(|| "no echo server".into())
    }

    /// Looks `name` up into the scratch slot, runs `f` on the result, and empties the
    /// slot again.
    fn with_lookup<T>(
        &self,
        name: &str,
        f: impl FnOnce(Result<Cap<Endpoint>, keel_rt::protocol::Error>) -> T,
    ) -> Result<T, alloc::string::String> {
        ensure!(self.scratch != 0, "no free slot for a lookup");
        let result = names::lookup(self.names, name, self.cnode, self.scratch);
        let value = f(result);
        if result.is_ok() {
            self.cnode
                .delete(self.scratch, ROOT_DEPTH)
                .map_err(|e| alloc::format!("cannot empty the scratch slot: {e}"))?;
        }
        Ok(value)
    }

    fn test_lookup(&mut self) -> Check {
        let answer = self.with_lookup(keel_servers::echo::NAME, |found| {
            found.and_then(|echo| keel_servers::echo::call(echo, &[0x1234]))
        })?;
        match answer {
            Ok(words) if words.as_slice() == [0x1234] => Ok(()),
            other => Err(alloc::format!("lookup and call: {other:?}")),
        }
    }

    fn test_unknown_name(&mut self) -> Check {
        let result = self.with_lookup("no-such-server", |found| found.map(|_| ()))?;
        ensure!(
            result == Err(keel_rt::protocol::Error::NotFound),
            "lookup of an unknown name: {result:?}"
        );
        Ok(())
    }

    fn test_echo(&mut self) -> Check {
        let echo = self.echo_server()?;
        let full: [u64; keel_servers::echo::MAX_WORDS] = core::array::from_fn(|i| i as u64 * 7);
        for n in 0..=keel_servers::echo::MAX_WORDS {
            let words = &full[..n];
            let reply = keel_servers::echo::call(echo, words);
            ensure!(
                reply.as_ref().map(|w| w.as_slice()) == Ok(words),
                "{n} words came back as {reply:?}"
            );
        }
        let mut out = [0u8; 64];
        let text = keel_servers::echo::call_text(echo, b"hello, keel", &mut out);
        ensure!(text == Ok(b"hello, keel"), "text came back as {text:?}");
        Ok(())
    }

    fn test_unknown_label(&mut self) -> Check {
        unknown_label_refused(self.echo_server()?)
    }

    fn test_timer(&mut self) -> Check {
        use keel_servers::timer;
        let Some(server) = self.timer else {
            return Err("no timer server".into());
        };
        let t0 = timer::now(server)
            .map_err(|e| alloc::format!("now: {e:?}"))?
            .0;
        let t1 = timer::sleep(server, 20).map_err(|e| alloc::format!("sleep 20: {e:?}"))?;
        let t2 = timer::sleep(server, 50).map_err(|e| alloc::format!("sleep 50: {e:?}"))?;
        let (t3, ms) = timer::now(server).map_err(|e| alloc::format!("now: {e:?}"))?;
        ensure!(
            t1 >= t0 + timer::ticks_for(20),
            "20 ms ended early: tick {t1} from {t0}"
        );
        ensure!(
            t2 >= t1 + timer::ticks_for(50),
            "50 ms ended early: tick {t2} from {t1}"
        );
        ensure!(
            t3 >= t2 && ms == t3 * 1000 / timer::TICK_HZ,
            "now went back or disagrees: {t3} ticks, {ms} ms after {t2}"
        );
        Ok(())
    }

    fn test_serial(&mut self) -> Check {
        let written = serial::write(self.serial, b"(a line written by the test)\n");
        ensure!(written == Ok(()), "write: {written:?}");
        unknown_label_refused(self.serial)
    }

    fn test_power(&mut self) -> Check {
        let Some(service) = self.power else {
            return Err("no power service".into());
        };
        unknown_label_refused(service)
    }

    fn test_heap(&mut self) -> Check {
        use alloc::collections::BTreeMap;
        use alloc::vec::Vec;
        let before = keel_rt::heap::heap_stats();
        {
            let squares: Vec<u64> = (0..4096).map(|i| i * i).collect();
            ensure!(
                squares.iter().sum::<u64>() == (0..4096u64).map(|i| i * i).sum(),
                "a Vec lost values"
            );
            let mut by_name = BTreeMap::new();
            const NAMES: [&str; 6] = ["names", "serial", "timer", "echo", "power", "shell"];
            for (i, name) in NAMES.iter().enumerate() {
                by_name.insert(alloc::string::String::from(*name), i);
            }
            ensure!(
                by_name.len() == NAMES.len() && by_name.contains_key("echo"),
                "a BTreeMap lost keys"
            );
            let text = alloc::format!("{} servers", by_name.len());
            ensure!(text.ends_with("servers"), "a String: {text}");
            let during = keel_rt::heap::heap_stats();
            ensure!(
                during.allocated > before.allocated,
                "the heap counted nothing: {during:?}"
            );
        }
        let after = keel_rt::heap::heap_stats();
        ensure!(
            after.allocated == before.allocated,
            "not all given back: {before:?} then {after:?}"
        );
        Ok(())
    }

    /// `bench`: [`BENCH_RUNS`] runs of [`BENCH_CALLS`] Calls to the echo server on
    /// CPU 1 (one word each, the reply checked), timed with RDTSC. Prints the median
    /// and the range, in TSC cycles per round trip.
    fn bench(&mut self) {
        let Some(echo) = self.echo else {
            println!("bench: no echo server");
            return;
        };
        let echoes = time_calls(|i| match keel_servers::echo::call(echo, &[i]) {
            Ok(words) if words.as_slice() == [i] => Ok(()),
            other => Err(alloc::format!("echo {i}: {other:?}")),
        });
        report("echo round trip", echoes);
    }
}

/// [`BENCH_RUNS`] runs of [`BENCH_CALLS`] calls of `call`, each run's TSC cycles per
/// call, sorted; or the first failure.
fn time_calls(
    mut call: impl FnMut(u64) -> Check,
) -> Result<[u64; BENCH_RUNS], alloc::string::String> {
    let mut runs = [0u64; BENCH_RUNS];
    for run in runs.iter_mut() {
        let start = keel_sys::rdtsc();
        for i in 0..BENCH_CALLS {
            call(i)?;
        }
        *run = keel_sys::rdtsc().wrapping_sub(start) / BENCH_CALLS;
    }
    runs.sort_unstable();
    Ok(runs)
}

/// One `bench` line.
fn report(what: &str, runs: Result<[u64; BENCH_RUNS], alloc::string::String>) {
    match runs {
        Ok(runs) => println!(
            "bench: {what}: {} cycles per call (median of {BENCH_RUNS} runs of {BENCH_CALLS}; min {}, max {})",
            runs[BENCH_RUNS / 2],
            runs[0],
            runs[BENCH_RUNS - 1]
        ),
        Err(why) => println!("bench: {what} failed: {why}"),
    }
}
