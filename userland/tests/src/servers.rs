//! The servers of `keel-servers` (name service, echo) as threads of the suite: name
//! registration and lookup (a badged endpoint arrives; an unknown name is refused),
//! 10,000 echoes, and servers started with badged fault endpoints as init starts them:
//! one cannot touch an I/O port beyond its capability (refused through the capability,
//! a #GP fault reported without it), and one that faults is reported while the name
//! service and the echo server keep answering.

use keel_abi::fault::{FaultType, user_exception};
use keel_abi::object::cap_tag;
use keel_rt::ThreadConfig;
use keel_servers::{StartInfo, echo, names};
use keel_sys::cap::{Cap, Endpoint, IoPort, init};
use keel_sys::{CapRights, Error, Message, probe};

use crate::harness::{
    DEPTH, Env, OrFail, Suite, TestResult, Why, pause, recv_timeout, set_shared, shared,
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
        let server = match names::lookup(ns, echo::NAME, slot) {
            Ok(c) => c,
            Err(e) => fail!("lookup echo after the fault: {e:?}"),
        };
        for i in 0..100u64 {
            let r = echo::call(server, 0x20, &[i, !i]);
            ensure!(
                r.label() == 0x20 && r.words::<2>() == [i, !i],
                "echo {i} after the fault: {:?}",
                r.words::<2>()
            );
        }
        let slot = env.slot()?;
        ensure!(
            names::lookup(ns, "crasher", slot).is_ok(),
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
    let (t, ns, _) = start_names(env, 0x77)?;
    let service = env.endpoint()?;
    let result = (|| {
        names::register(ns, "svc", service)
            .map_err(|e| crate::harness::why(format_args!("register: {e:?}")))?;
        ensure!(
            names::register(ns, "svc", service)
                == Err(names::Error::Refused(names::Status::Exists)),
            "a second registration of the name was accepted"
        );
        let slot = env.slot()?;
        let unknown = names::lookup(ns, "nobody", slot);
        ensure!(
            unknown == Err(names::Error::Refused(names::Status::NotFound)),
            "unknown name: {unknown:?}"
        );
        ensure!(env.is_empty(slot), "a refused lookup filled the slot");
        let got = match names::lookup(ns, "svc", slot) {
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
        let server = match names::lookup(ns, echo::NAME, slot) {
            Ok(c) => c,
            Err(e) => fail!("lookup echo: {e:?}"),
        };
        for i in 0..10_000u64 {
            let r = echo::call(server, 0x10 + (i & 0xf), &[i, !i, i * 3, 7, i ^ 0x55]);
            ensure!(
                r.label() == 0x10 + (i & 0xf)
                    && r.length() == 5
                    && r.words::<5>() == [i, !i, i * 3, 7, i ^ 0x55],
                "echo {i}: label {:#x} words {:?}",
                r.label(),
                r.words::<5>()
            );
        }
        Ok(())
    })();
    env.destroy(echo_thread)?;
    env.destroy(names_thread)?;
    result
}
