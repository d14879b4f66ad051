//! The servers of `keel-servers` (name service, echo) as threads of the suite: name
//! registration and lookup (a badged endpoint arrives; an unknown name is refused; a
//! name is refused to another client and registered again by its owner),
//! 10,000 echoes, and servers started with badged fault endpoints as init starts them:
//! one cannot touch an I/O port beyond its capability (refused through the capability,
//! a #GP fault reported without it), and one that faults is reported while the name
//! service and the echo server keep answering. A server in a CSpace of its own (as init
//! starts them, `keel_servers::cspace`) invokes what it was given, the IPC fastpath
//! included, and cannot even look up a capability the suite holds. The timer server,
//! confined with the PIT's ports and IRQ 0, counts ticks and wakes sleepers in order.
//! The key-value store server of `userland/programs/kv` answers its typed errors.

use keel_abi::fault::{FaultType, user_exception};
use keel_abi::object::cap_tag;
use keel_rt::ThreadConfig;
use keel_servers::cspace::{ServerCSpace, slot};
use keel_servers::{StartInfo, echo, names, serial, timer};
use keel_sys::cap::{Cap, Endpoint, IoPort, IrqHandler, init};
use keel_sys::{CapRights, Error, Message, probe};

use crate::harness::{
    DEPTH, Env, OrFail, Suite, TestResult, Why, pause, recv_timeout, set_shared, shared, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the server tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("names_register_lookup_and_unknown", || {
        names_register_lookup(env)
    });
    suite.run("echo_server_answers_10000_calls", || echo_10000(env));
    suite.run(
        "server_port_beyond_its_capability_refused_or_faults",
        || port_beyond_capability(env),
    );
    suite.run("server_fault_reported_while_others_keep_running", || {
        fault_reported_others_run(env)
    });
    suite.run("serial_server_loopback_write_irq_read_and_log_line", || {
        serial_loopback(env)
    });
    suite.run(
        "serial_server_lines_of_three_writers_interleave_whole",
        || serial_lines_interleave(env),
    );
    suite.run(
        "confined_server_uses_its_own_cspace_and_nothing_else",
        || confined_server(env),
    );
    suite.run("timer_server_pit_ticks_and_sleeps_in_order", || {
        timer_sleeps(env)
    });
    suite.run("kv_server_round_trips_missing_keys_and_full_table", || {
        kv_server(env)
    });
}

/// Starts a server thread with its own fault endpoint capability (the suite's, minted
/// with `badge`), as init does. It runs in the suite's address space: a copy of the
/// image mapping per server, as init makes, costs more CNode slots than the suite has.
fn start_server(
    env: &mut Env,
    entry: fn(u64),
    start: StartInfo,
    badge: u64,
) -> Result<keel_rt::Thread, Why> {
    let fault = env.mint(env.fault_ep, CapRights::ALL, badge)?;
    let config = ThreadConfig {
        priority: CHILD_PRIORITY,
        fault_ep: fault.cptr(),
        affinity: None,
        cspace: None,
    };
    let thread = env
        .alloc
        .create_thread(entry, start.pack(), config)
        .or_fail("create server thread")?;
    thread.start().or_fail("start server")?;
    Ok(thread)
}

/// COM2's ports: a range the suite uses nowhere else (reads of an absent UART are
/// harmless).
const GIVEN_PORTS: (u16, u16) = (0x2f8, 0x2ff);
/// A port outside [`GIVEN_PORTS`] (COM1's line status).
const OTHER_PORT: u16 = 0x3fd;

/// Records in shared words 1 and 2 how its I/O port capability answers inside and
/// outside its range (1: read, 2: IllegalOperation, 3: another error), then reads a
/// port directly, without the kernel, which must fault (shared word 3 stays 0).
fn port_server(argument: u64) {
    let port = Cap::<IoPort>::from_cptr(StartInfo::unpack(argument).io_port);
    let code = |r: Result<u8, Error>| match r {
        Ok(_) => 1,
        Err(Error::IllegalOperation) => 2,
        Err(_) => 3,
    };
    set_shared(1, code(port.in8(GIVEN_PORTS.0 + 5)));
    set_shared(2, code(port.in8(OTHER_PORT)));
    probe::port_in8(GIVEN_PORTS.0 + 5);
    set_shared(3, 1);
}

fn port_beyond_capability(env: &mut Env) -> TestResult {
    let port_slot = env.slot()?;
    if init::IO_PORT_CONTROL
        .issue(
            GIVEN_PORTS.0 as u64,
            GIVEN_PORTS.1 as u64,
            init::CNODE,
            port_slot,
            DEPTH,
        )
        .is_err()
    {
        return Err(Why::Skipped("COM2's ports are already issued"));
    }
    let start = StartInfo {
        io_port: port_slot,
        ..StartInfo::default()
    };
    const BADGE: u64 = 0x5e1;
    let server = start_server(env, port_server, start, BADGE)?;
    let result = (|| {
        let Some(r) = recv_timeout(env.fault_ep) else {
            fail!("no fault from the server")
        };
        ensure!(
            shared(1) == 1,
            "a port inside its capability: code {}",
            shared(1)
        );
        ensure!(
            shared(2) == 2,
            "a port outside its capability: code {} (2 = IllegalOperation)",
            shared(2)
        );
        ensure!(r.badge == BADGE, "fault badge {:#x}", r.badge);
        ensure!(
            r.label() == FaultType::UserException as u64
                && r.words::<5>()[user_exception::NUMBER] == 13,
            "fault label {} number {}: not a #GP",
            r.label(),
            r.words::<5>()[user_exception::NUMBER]
        );
        ensure!(shared(3) == 0, "the direct port read went through");
        Ok(())
    })();
    env.destroy(server)?;
    init::CNODE
        .delete(port_slot, DEPTH)
        .or_fail("delete port cap")?;
    result
}

/// Registers as `crasher`, then executes UD2 (shared word 4 stays 0 if it stops there).
fn crasher(argument: u64) {
    let start = StartInfo::unpack(argument);
    let ep = Cap::<Endpoint>::from_cptr(start.serve);
    if names::register(Cap::from_cptr(start.names), "crasher", ep).is_ok() {
        set_shared(5, 1);
    }
    probe::ud2();
    set_shared(4, 1);
}

fn fault_reported_others_run(env: &mut Env) -> TestResult {
    let (names_thread, ns, echo_ns) = start_names(env, 1)?;
    let echo_ep = env.endpoint()?;
    let crasher_ep = env.endpoint()?;
    const ECHO_BADGE: u64 = 0xec0;
    const CRASHER_BADGE: u64 = 0xc4a;
    let echo_server = start_server(
        env,
        echo::main,
        StartInfo {
            serve: echo_ep.cptr(),
            names: echo_ns.cptr(),
            ..StartInfo::default()
        },
        ECHO_BADGE,
    )?;
    let crashing = match start_server(
        env,
        crasher,
        StartInfo {
            serve: crasher_ep.cptr(),
            names: ns.cptr(), // the suite's own (badged) capability: a copy is not needed
            ..StartInfo::default()
        },
        CRASHER_BADGE,
    ) {
        Ok(s) => s,
        Err(e) => {
            env.destroy(echo_server)?;
            env.destroy(names_thread)?;
            return Err(e);
        }
    };
    let result = (|| {
        let Some(r) = recv_timeout(env.fault_ep) else {
            fail!("no fault reported")
        };
        ensure!(
            r.badge == CRASHER_BADGE,
            "the fault came with badge {:#x}, not the crasher's",
            r.badge
        );
        ensure!(
            r.label() == FaultType::UserException as u64
                && r.words::<5>()[user_exception::NUMBER] == 6,
            "fault label {}: not the crasher's #UD",
            r.label()
        );
        ensure!(shared(5) == 1, "the crasher did not register first");
        ensure!(shared(4) == 0, "the crasher ran past UD2");
        // The others keep running: names answer, echo answers, nothing else faults.
        let slot = env.slot()?;
        let server = match names::lookup(ns, echo::NAME, init::CNODE, slot) {
            Ok(c) => c,
            Err(e) => fail!("lookup echo after the fault: {e:?}"),
        };
        for i in 0..100u64 {
            let r = echo::call(server, &[i, !i]);
            ensure!(
                r.as_ref().map(|w| w.as_slice()) == Ok(&[i, !i][..]),
                "echo {i} after the fault: {r:?}"
            );
        }
        let slot = env.slot()?;
        ensure!(
            names::lookup(ns, "crasher", init::CNODE, slot).is_ok(),
            "the crasher's name is gone from the name service"
        );
        pause(50_000_000);
        ensure!(
            env.fault_ep.nb_recv().is_none(),
            "a second fault was reported"
        );
        Ok(())
    })();
    env.destroy(crashing)?;
    env.destroy(echo_server)?;
    env.destroy(names_thread)?;
    result
}

/// A started name service; returns its thread, a capability to it badged `badge` and
/// one badged `badge + 1`.
fn start_names(
    env: &mut Env,
    badge: u64,
) -> Result<(keel_rt::Thread, Cap<Endpoint>, Cap<Endpoint>), crate::harness::Why> {
    let ep = env.endpoint()?;
    let slots = env.alloc.slots.alloc_range(8).or_fail("slots")?;
    let start = StartInfo {
        serve: ep.cptr(),
        slots,
        slot_count: 8,
        ..StartInfo::default()
    };
    let t = env.spawn(names::main, start.pack(), CHILD_PRIORITY)?;
    let client = env.mint(ep, CapRights::ALL, badge)?;
    let other = env.mint(ep, CapRights::ALL, badge + 1)?;
    Ok((t, client, other))
}

/// Sends label 5, word 42 on the endpoint in shared word 10.
fn send_through_shared(_: u64) {
    Cap::<Endpoint>::from_cptr(shared(10)).send(&Message::new(5).word(42));
}

fn names_register_lookup(env: &mut Env) -> TestResult {
    let (t, ns, other) = start_names(env, 0x77)?;
    let service = env.endpoint()?;
    let result = (|| {
        names::register(ns, "svc", service)
            .map_err(|e| crate::harness::why(format_args!("register: {e:?}")))?;
        ensure!(
            names::register(other, "svc", service) == Err(keel_rt::protocol::Error::Exists),
            "another client's registration of the name was accepted"
        );
        // Its owner (same badge) registers it again, as a restarted server does.
        ensure!(
            names::register(ns, "svc", service) == Ok(()),
            "the owner's second registration was refused"
        );
        let slot = env.slot()?;
        let unknown = names::lookup(ns, "nobody", init::CNODE, slot);
        ensure!(
            unknown == Err(keel_rt::protocol::Error::NotFound),
            "unknown name: {unknown:?}"
        );
        ensure!(env.is_empty(slot), "a refused lookup filled the slot");
        let got = match names::lookup(ns, "svc", init::CNODE, slot) {
            Ok(c) => c,
            Err(e) => fail!("lookup: {e:?}"),
        };
        ensure!(
            env.has_tag(got.cptr(), cap_tag::ENDPOINT),
            "the lookup did not deliver an endpoint"
        );
        // The capability reaches the registered endpoint, with the client's badge.
        set_shared(10, got.cptr());
        let sender = env.spawn(send_through_shared, 0, CHILD_PRIORITY)?;
        let r = recv_timeout(service);
        env.destroy(sender)?;
        ensure!(
            r.is_some_and(|r| r.label() == 5 && r.mr(0) == 42 && r.badge == 0x77),
            "message through the looked-up capability: {r:?}"
        );
        Ok(())
    })();
    env.destroy(t)?;
    result
}

fn echo_10000(env: &mut Env) -> TestResult {
    let (names_thread, ns, echo_ns) = start_names(env, 1)?;
    let echo_ep = env.endpoint()?;
    let start = StartInfo {
        serve: echo_ep.cptr(),
        names: echo_ns.cptr(),
        ..StartInfo::default()
    };
    let echo_thread = env.spawn(echo::main, start.pack(), CHILD_PRIORITY)?;
    let result = (|| {
        let slot = env.slot()?;
        let server = match names::lookup(ns, echo::NAME, init::CNODE, slot) {
            Ok(c) => c,
            Err(e) => fail!("lookup echo: {e:?}"),
        };
        for i in 0..10_000u64 {
            let words = [i, !i, i * 3, 7, i ^ 0x55];
            let r = echo::call(server, &words[..1 + (i % 5) as usize]);
            ensure!(
                r.as_ref().map(|w| w.as_slice()) == Ok(&words[..1 + (i % 5) as usize]),
                "echo {i}: {r:?}"
            );
        }
        Ok(())
    })();
    env.destroy(echo_thread)?;
    env.destroy(names_thread)?;
    result
}

/// COM1's modem control register and its loopback bit: in loopback the UART receives
/// what it transmits, and nothing leaves the machine.
const MODEM_CONTROL: u16 = 0x3fc;
const LOOPBACK: u64 = 1 << 4;
/// What the loopback test writes: a plain write, then one log line.
const LOOPBACK_TEXT: &[u8] = b"loop-line\nINFO  servers: whole line\n";

/// Reads from the serial server in shared word 10 until `argument` bytes arrived;
/// stores them in shared words 1..9 (eight bytes each) and the count in word 0.
fn serial_reader(argument: u64) {
    let server = Cap::<Endpoint>::from_cptr(shared(10));
    let mut got = [0u8; 64];
    let mut count = 0;
    while count < (argument as usize).min(got.len()) {
        let mut piece = [0u8; serial::MAX_TEXT];
        let Ok(bytes) = serial::read(server, &mut piece) else {
            set_shared(11, 1);
            return;
        };
        let take = bytes.len().min(got.len() - count);
        got[count..count + take].copy_from_slice(&bytes[..take]);
        count += take;
        set_shared(12, count as u64);
    }
    for (i, chunk) in got.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        set_shared(1 + i, u64::from_le_bytes(word));
    }
    set_shared(0, count as u64);
}

/// Runs `test` with the serial server started on COM1 in loopback (IRQ 4 to its
/// notification; shared word 10 holds its endpoint), then stops it and restores COM1.
/// Nothing may print while `test` runs: the kernel console's output is swallowed too.
fn with_loopback_serial(
    env: &mut Env,
    test: impl FnOnce(&mut Env, Cap<Endpoint>) -> TestResult,
) -> TestResult {
    let (first, last) = serial::PORTS;
    let port_slot = env.slot()?;
    if init::IO_PORT_CONTROL
        .issue(first as u64, last as u64, init::CNODE, port_slot, DEPTH)
        .is_err()
    {
        return Err(Why::Skipped("COM1's ports are already issued"));
    }
    let port = Cap::<IoPort>::from_cptr(port_slot);
    let window = env.alloc.slots.alloc_range(2).or_fail("slots")?;
    let handler = Cap::<IrqHandler>::from_cptr(window);
    if init::IRQ_CONTROL
        .get(serial::IRQ as u64, init::CNODE, window, DEPTH)
        .is_err()
    {
        init::CNODE
            .delete(port_slot, DEPTH)
            .or_fail("delete port cap")?;
        return Err(Why::Skipped("IRQ 4 is taken"));
    }
    let notification = env.notification()?;
    let badged = env.mint(notification, CapRights::ALL, serial::IRQ_BADGE)?;
    handler
        .set_notification(badged)
        .or_fail("set notification")?;
    let modem = port.in8(MODEM_CONTROL).or_fail("read MCR")? as u64;
    let ep = env.endpoint()?;
    let start = StartInfo {
        serve: ep.cptr(),
        io_port: port_slot,
        slots: window,
        slot_count: 2,
        ..StartInfo::default()
    };
    port.out8(MODEM_CONTROL as u64, modem | LOOPBACK)
        .or_fail("loopback on")?;
    let server = env.create(serial::main, start.pack(), CHILD_PRIORITY)?;
    let result = (|| {
        server
            .tcb
            .bind_notification(notification)
            .or_fail("bind notification")?;
        server.start().or_fail("start server")?;
        set_shared(10, ep.cptr());
        test(env, ep)
    })();
    let restored = port.out8(MODEM_CONTROL as u64, modem);
    env.destroy(server)?;
    let _ = handler.clear();
    init::CNODE
        .delete(window, DEPTH)
        .or_fail("delete handler")?;
    init::CNODE
        .delete(port_slot, DEPTH)
        .or_fail("delete port cap")?;
    restored.or_fail("loopback off")?;
    result
}

/// The serial server on COM1 in loopback: a write comes back through IRQ 4 to a
/// waiting reader, and a `log` record arrives as one whole line.
fn serial_loopback(env: &mut Env) -> TestResult {
    with_loopback_serial(env, |env, ep| {
        let reader = env.spawn(serial_reader, LOOPBACK_TEXT.len() as u64, CHILD_PRIORITY)?;
        let write = serial::write(ep, b"loop-line\n");
        serial::install_logger(ep, log::LevelFilter::Info);
        log::info!("whole line");
        serial::remove_logger();
        let arrived = wait_until(|| shared(0) != 0 || shared(11) != 0);
        env.destroy(reader)?;
        ensure!(write == Ok(()), "write: {write:?}");
        ensure!(shared(11) == 0, "the reader's READ was refused");
        ensure!(
            arrived,
            "{} of {} bytes came back through IRQ 4",
            shared(12),
            LOOPBACK_TEXT.len()
        );
        let mut got = [0u8; 64];
        for (i, chunk) in got.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&shared(1 + i).to_le_bytes());
        }
        let count = shared(0) as usize;
        ensure!(
            &got[..count] == LOOPBACK_TEXT,
            "read back {:?}",
            core::str::from_utf8(&got[..count]).unwrap_or("(not UTF-8)")
        );
        Ok(())
    })
}

/// Bytes the interleaving test reads back (three writers × lines of 10 bytes).
static READ_BACK: [core::sync::atomic::AtomicU8; 512] =
    [const { core::sync::atomic::AtomicU8::new(0) }; 512];
/// Lines each writer sends.
const LINES: u64 = 8;

/// Writer `w` (1–3): sends `LINES` lines "wN:line-K\n" (10 bytes), one request each.
fn line_writer(w: u64) {
    let server = Cap::<Endpoint>::from_cptr(shared(10));
    for k in 0..LINES {
        let line = [
            b'w',
            b'0' + w as u8,
            b':',
            b'l',
            b'i',
            b'n',
            b'e',
            b'-',
            b'0' + k as u8,
            b'\n',
        ];
        if serial::write(server, &line).is_err() {
            set_shared(11, 1);
        }
    }
    crate::harness::add_shared(13, 1);
}

/// Reads `argument` bytes into `READ_BACK` (shared word 12: how many so far).
fn bulk_reader(argument: u64) {
    let server = Cap::<Endpoint>::from_cptr(shared(10));
    let want = (argument as usize).min(READ_BACK.len());
    let mut count = 0;
    while count < want {
        let mut piece = [0u8; serial::MAX_TEXT];
        let Ok(bytes) = serial::read(server, &mut piece) else {
            set_shared(11, 1);
            return;
        };
        for &b in bytes.iter().take(want - count) {
            READ_BACK[count].store(b, core::sync::atomic::Ordering::Relaxed);
            count += 1;
        }
        set_shared(12, count as u64);
    }
}

/// Three servers' worth of output through the serial server: three writers send eight
/// lines each at once; read back through loopback, every line arrives whole, exactly
/// once, and each writer's lines in its own order.
fn serial_lines_interleave(env: &mut Env) -> TestResult {
    with_loopback_serial(env, |env, _ep| {
        let total = 3 * LINES * 10;
        let reader = env.spawn(bulk_reader, total, CHILD_PRIORITY)?;
        let writers = [
            env.spawn(line_writer, 1, CHILD_PRIORITY)?,
            env.spawn(line_writer, 2, CHILD_PRIORITY)?,
            env.spawn(line_writer, 3, CHILD_PRIORITY)?,
        ];
        let arrived = wait_until(|| shared(12) >= total || shared(11) != 0);
        for w in writers {
            env.destroy(w)?;
        }
        env.destroy(reader)?;
        ensure!(shared(11) == 0, "a write or read was refused");
        ensure!(arrived, "{} of {total} bytes came back", shared(12));
        let mut bytes = [0u8; 512];
        for (b, r) in bytes.iter_mut().zip(&READ_BACK) {
            *b = r.load(core::sync::atomic::Ordering::Relaxed);
        }
        let mut next = [0u8; 4];
        for line in bytes[..total as usize]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let whole = line.len() == 9 && &line[..1] == b"w" && &line[2..8] == b":line-";
            ensure!(
                whole,
                "a line arrived cut or mixed: {:?}",
                core::str::from_utf8(line).unwrap_or("(not UTF-8)")
            );
            let (w, k) = ((line[1] - b'0') as usize, line[8] - b'0');
            ensure!(
                (1..=3).contains(&w) && k == next[w],
                "writer {w}'s line {k} arrived when line {} was due",
                next[w]
            );
            next[w] += 1;
        }
        ensure!(
            next[1..] == [LINES as u8; 3],
            "lines per writer: {:?}",
            &next[1..]
        );
        Ok(())
    })
}

/// Shared word: a capability pointer the suite holds (an endpoint) that the confined
/// probe was not given.
const HELD: usize = 9;

/// Runs confined. Shared word 6: copying its own endpoint inside its CNode (1: done).
/// Word 7: copying from slot 7 of its CSpace, where the suite has IOPortControl but it
/// has nothing (2: FailedLookup). Word 8: copying from the suite's [`HELD`] pointer
/// (2: FailedLookup). Then it Calls [`HELD`], which must be a capability fault (word 10
/// stays 0).
fn confined_probe(argument: u64) {
    let start = StartInfo::unpack(argument);
    let cnode = start.cnode();
    let code = |r: Result<(), Error>| match r {
        Ok(()) => 1,
        Err(Error::FailedLookup { .. }) => 2,
        Err(_) => 3,
    };
    set_shared(
        6,
        code(cnode.copy(
            start.slots,
            DEPTH,
            cnode,
            start.serve,
            DEPTH,
            CapRights::ALL,
        )),
    );
    set_shared(
        7,
        code(cnode.copy(
            start.slots + 1,
            DEPTH,
            cnode,
            init::IO_PORT_CONTROL.cptr(),
            DEPTH,
            CapRights::ALL,
        )),
    );
    set_shared(
        8,
        code(cnode.copy(
            start.slots + 1,
            DEPTH,
            cnode,
            shared(HELD),
            DEPTH,
            CapRights::ALL,
        )),
    );
    Cap::<Endpoint>::from_cptr(shared(HELD)).call(&Message::new(1));
    set_shared(10, 1);
}

/// A CSpace of its own for one test server: the endpoint it serves and its badged
/// fault endpoint, at the well-known slots, and `free` free slots.
fn confined_space(
    env: &mut Env,
    serve: Cap<Endpoint>,
    badge: u64,
    free: u64,
) -> Result<(ServerCSpace, StartInfo), Why> {
    let space = ServerCSpace::new(&mut env.alloc, free).or_fail("make the cspace")?;
    space
        .copy(slot::SERVE, serve, CapRights::ALL)
        .or_fail("give the endpoint")?;
    space
        .mint(slot::FAULT, env.fault_ep, CapRights::ALL, badge)
        .or_fail("give the fault endpoint")?;
    let start = StartInfo {
        serve: slot::SERVE,
        slots: slot::FIRST_FREE,
        slot_count: free,
        ..StartInfo::default()
    };
    Ok((space, start))
}

/// Starts `entry` in `space` (the suite's address space).
fn start_confined(
    env: &mut Env,
    entry: fn(u64),
    space: &ServerCSpace,
    start: StartInfo,
) -> Result<keel_rt::Thread, Why> {
    let thread = create_confined(env, entry, space, start)?;
    thread.start().or_fail("start confined thread")?;
    Ok(thread)
}

/// Creates, without starting it, `entry` in `space` (the suite's address space).
fn create_confined(
    env: &mut Env,
    entry: fn(u64),
    space: &ServerCSpace,
    start: StartInfo,
) -> Result<keel_rt::Thread, Why> {
    let config = ThreadConfig {
        priority: CHILD_PRIORITY,
        fault_ep: slot::FAULT,
        affinity: None,
        cspace: Some(space.thread_cspace()),
    };
    let thread = env
        .alloc
        .create_thread(entry, start.pack(), config)
        .or_fail("create confined thread")?;
    Ok(thread)
}

/// Stops a confined thread and deletes its CSpace.
fn stop_confined(env: &mut Env, thread: keel_rt::Thread, space: ServerCSpace) -> TestResult {
    let _ = thread.tcb.suspend();
    space.destroy(&mut env.alloc).or_fail("delete the cspace")?;
    env.destroy(thread)
}

fn confined_server(env: &mut Env) -> TestResult {
    // The echo server, confined, answers through the endpoint it was given.
    let echo_ep = env.endpoint()?;
    let (echo_space, echo_start) = confined_space(env, echo_ep, 0xec1, 1)?;
    ensure!(
        echo_space.size() == 16,
        "7 well-known slots and 1 free one: {} slots",
        echo_space.size()
    );
    let echo_thread = start_confined(env, echo::main, &echo_space, echo_start)?;
    let echoed = (|| {
        for i in 0..1000u64 {
            let r = echo::call(echo_ep, &[i, i * 3]);
            ensure!(
                r.as_ref().map(|w| w.as_slice()) == Ok(&[i, i * 3][..]),
                "confined echo {i}: {r:?}"
            );
        }
        Ok(())
    })();
    stop_confined(env, echo_thread, echo_space)?;
    echoed?;
    // The probe: its own slots work, the suite's do not exist for it.
    let probe_ep = env.endpoint()?;
    let held = env.endpoint()?;
    ensure!(held.cptr() >= 16, "the held endpoint is at {}", held.cptr());
    for word in 6..=10 {
        set_shared(word, 0);
    }
    set_shared(HELD, held.cptr());
    const BADGE: u64 = 0xc0f;
    let (space, start) = confined_space(env, probe_ep, BADGE, 2)?;
    let probe = start_confined(env, confined_probe, &space, start)?;
    let result = (|| {
        let Some(r) = recv_timeout(env.fault_ep) else {
            fail!("no fault from the confined probe")
        };
        ensure!(
            shared(6) == 1,
            "copy of its own endpoint: code {}",
            shared(6)
        );
        ensure!(
            shared(7) == 2,
            "copy from slot 7 (the suite's IOPortControl): code {} (2 = FailedLookup)",
            shared(7)
        );
        ensure!(
            shared(8) == 2,
            "copy from the suite's endpoint: code {} (2 = FailedLookup)",
            shared(8)
        );
        ensure!(r.badge == BADGE, "fault badge {:#x}", r.badge);
        let words = r.words::<2>();
        ensure!(
            r.label() == FaultType::CapFault as u64
                && words[keel_abi::fault::cap_fault::ADDR] == held.cptr(),
            "fault label {} address {:#x}: not a capability fault on the held endpoint",
            r.label(),
            words[keel_abi::fault::cap_fault::ADDR]
        );
        ensure!(shared(10) == 0, "the Call on the held endpoint returned");
        Ok(())
    })();
    stop_confined(env, probe, space)?;
    result
}

/// Shared word: the timer server's endpoint, for [`long_sleeper`].
const TIMER: usize = 11;

/// Sleeps 200 ms at the timer server; records the wake-up tick in word 12 (+1, so 0
/// means "not yet").
/// What a sleeper records when its sleep fails (plus one, as every tick it records).
const SLEEP_FAILED: u64 = u64::MAX - 1;

fn long_sleeper(_: u64) {
    let tick = timer::sleep(Cap::from_cptr(shared(TIMER)), 200).unwrap_or(SLEEP_FAILED);
    set_shared(12, tick + 1);
}

fn short_sleeper(_: u64) {
    let tick = timer::sleep(Cap::from_cptr(shared(TIMER)), 30).unwrap_or(SLEEP_FAILED);
    set_shared(13, tick + 1);
}

fn timer_sleeps(env: &mut Env) -> TestResult {
    let ports = env.slot()?;
    if init::IO_PORT_CONTROL
        .issue(
            timer::PORTS.0 as u64,
            timer::PORTS.1 as u64,
            init::CNODE,
            ports,
            DEPTH,
        )
        .is_err()
    {
        return Err(Why::Skipped("the PIT's ports are already issued"));
    }
    let handler = Cap::<IrqHandler>::from_cptr(env.slot()?);
    init::IRQ_CONTROL
        .get(timer::IRQ as u64, init::CNODE, handler.cptr(), DEPTH)
        .or_fail("IRQ 0 handler")?;
    let notification = env.notification()?;
    let badged = env.mint(notification, CapRights::ALL, timer::IRQ_BADGE)?;
    handler
        .set_notification(badged)
        .or_fail("point IRQ 0 at the notification")?;
    let ep = env.endpoint()?;
    // The IRQ handler and two sleepers.
    let (space, mut start) = confined_space(env, ep, 0x71, 3)?;
    space
        .copy(
            slot::IO_PORT,
            Cap::<IoPort>::from_cptr(ports),
            CapRights::ALL,
        )
        .or_fail("give the ports")?;
    space
        .copy(slot::FIRST_FREE, handler, CapRights::ALL)
        .or_fail("give the IRQ handler")?;
    start.io_port = slot::IO_PORT;
    let server = create_confined(env, timer::main, &space, start)?;
    server
        .tcb
        .bind_notification(notification)
        .or_fail("bind the notification")?;
    server.start().or_fail("start the timer server")?;
    set_shared(TIMER, ep.cptr());
    set_shared(12, 0);
    set_shared(13, 0);
    let result = (|| {
        let Ok((t0, _)) = timer::now(ep) else {
            fail!("no answer to NOW")
        };
        // Both sleeps in threads of their own, waited for with a timeout: a platform
        // whose PIT interrupt never arrives fails the test instead of hanging the run.
        let sleeper = env.spawn(long_sleeper, 0, CHILD_PRIORITY)?;
        pause(10_000_000);
        let short = env.spawn(short_sleeper, 0, CHILD_PRIORITY)?;
        let short_woke = wait_until(|| shared(13) != 0);
        let long_done_early = shared(12) != 0;
        let waited = short_woke && wait_until(|| shared(12) != 0);
        env.destroy(short)?;
        env.destroy(sleeper)?;
        ensure!(
            short_woke,
            "the 30 ms sleeper never woke: no PIT interrupt (IRQ 0) reached the timer server"
        );
        let t1 = shared(13) - 1;
        ensure!(t1 != SLEEP_FAILED, "sleep 30 failed");
        ensure!(
            !long_done_early,
            "the 200 ms sleeper woke before the 30 ms one"
        );
        ensure!(
            t1 >= t0 + timer::ticks_for(30),
            "woke at tick {t1}, {} after NOW said {t0}",
            t1 - t0
        );
        ensure!(waited, "the 200 ms sleeper never woke");
        let t2 = shared(12) - 1;
        ensure!(t2 != SLEEP_FAILED, "sleep 200 failed");
        ensure!(
            t2 >= t0 + timer::ticks_for(200) && t2 > t1,
            "the 200 ms sleeper woke at tick {t2} (NOW {t0}, short sleeper {t1})"
        );
        let Ok((t3, ms)) = timer::now(ep) else {
            fail!("no answer to NOW at the end")
        };
        ensure!(
            t3 >= t2 && ms == t3 * 1000 / timer::TICK_HZ,
            "NOW: tick {t3}, {ms} ms"
        );
        Ok(())
    })();
    stop_confined(env, server, space)?;
    init::CNODE
        .delete(handler.cptr(), DEPTH)
        .or_fail("delete the IRQ handler")?;
    init::CNODE
        .delete(ports, DEPTH)
        .or_fail("delete the port capability")?;
    result
}

/// The key-value store server (`userland/programs/kv`, the worked example of
/// doc/writing-a-server.md) as a thread of the suite, found through the name service:
/// values round-trip and are replaced, a missing key is `None` to GET and `NotFound` to
/// REMOVE, a new key in a full table is `Full` while an existing one can still be
/// replaced, and malformed or unknown requests get their typed errors.
fn kv_server(env: &mut Env) -> TestResult {
    use keel_rt::protocol::Error::{BadRequest, Full, NotFound, UnknownLabel};
    use keel_server_kv as kv;

    let (names_thread, ns, kv_ns) = start_names(env, 1)?;
    let kv_ep = env.endpoint()?;
    let start = StartInfo {
        serve: kv_ep.cptr(),
        names: kv_ns.cptr(),
        ..StartInfo::default()
    };
    let kv_thread = env.spawn(kv::main, start.pack(), CHILD_PRIORITY)?;
    let result = (|| {
        let slot = env.slot()?;
        let server = match names::lookup(ns, kv::NAME, init::CNODE, slot) {
            Ok(c) => c,
            Err(e) => fail!("lookup kv: {e:?}"),
        };
        ensure!(kv::get(server, 7) == Ok(None), "get of an empty table");
        ensure!(kv::put(server, 7, 70) == Ok(()), "put 7");
        ensure!(kv::put(server, u64::MAX, 0) == Ok(()), "put u64::MAX");
        let got = kv::get(server, 7);
        ensure!(got == Ok(Some(70)), "get 7: {got:?}");
        let got = kv::get(server, u64::MAX);
        ensure!(got == Ok(Some(0)), "get u64::MAX: {got:?}");
        ensure!(kv::put(server, 7, 71) == Ok(()), "replace 7");
        let got = kv::get(server, 7);
        ensure!(got == Ok(Some(71)), "get 7 after replacing: {got:?}");
        let got = kv::remove(server, 7);
        ensure!(got == Ok(71), "remove 7: {got:?}");
        let got = kv::remove(server, 7);
        ensure!(got == Err(NotFound), "remove 7 again: {got:?}");
        let got = kv::get(server, 7);
        ensure!(got == Ok(None), "get 7 after removing: {got:?}");
        // Fill the table: u64::MAX is in it already.
        for key in 1..kv::CAPACITY as u64 {
            let got = kv::put(server, key, key * 10);
            ensure!(got == Ok(()), "put {key} of {}: {got:?}", kv::CAPACITY);
        }
        let got = kv::put(server, 1000, 1);
        ensure!(got == Err(Full), "put into a full table: {got:?}");
        ensure!(
            kv::put(server, 3, 33) == Ok(()),
            "replace 3 in a full table"
        );
        for key in 1..kv::CAPACITY as u64 {
            let want = if key == 3 { 33 } else { key * 10 };
            let got = kv::get(server, key);
            ensure!(got == Ok(Some(want)), "get {key} of a full table: {got:?}");
        }
        ensure!(kv::remove(server, 5) == Ok(50), "remove 5 of a full table");
        ensure!(kv::put(server, 1000, 1) == Ok(()), "put after a remove");
        ensure!(kv::get(server, 1000) == Ok(Some(1)), "get 1000");
        // Malformed and unknown requests.
        let reply = server.call(&Message::new(kv::GET));
        let got = keel_rt::protocol::decode_reply::<Option<u64>>(&reply);
        ensure!(got == Err(BadRequest), "GET without a key: {got:?}");
        let reply = server.call(&Message::new(99).word(1));
        let got = keel_rt::protocol::decode_reply::<Option<u64>>(&reply);
        ensure!(got == Err(UnknownLabel), "label 99: {got:?}");
        Ok(())
    })();
    env.destroy(kv_thread)?;
    env.destroy(names_thread)?;
    result
}
