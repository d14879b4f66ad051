//! The servers of `keel-servers` (name service, echo) as threads of the suite: name
//! registration and lookup (a badged endpoint arrives; an unknown name is refused) and
//! 10,000 echoes.

use keel_abi::object::cap_tag;
use keel_servers::{StartInfo, echo, names};
use keel_sys::cap::{Cap, Endpoint};
use keel_sys::{CapRights, Message};

use crate::harness::{Env, OrFail, Suite, TestResult, recv_timeout, set_shared, shared};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the server tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("names_register_lookup_and_unknown", || {
        names_register_lookup(env)
    });
    suite.run("echo_server_answers_10000_calls", || echo_10000(env));
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
