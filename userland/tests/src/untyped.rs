//! Untyped Retype: every object type and size, argument checks, full slots,
//! exhaustion, memory returned by revoke (a thousand times), RevokeFirst; endpoints
//! deleted or revoked under their blocked threads.

use keel_abi::error::Error as Code;
use keel_abi::fault::{FaultType, cap_fault};
use keel_abi::invocation::InvocationLabel;
use keel_abi::object::{ObjectType, cap_tag};
use keel_sys::Error;
use keel_sys::Message;
use keel_sys::cap::{Cap, Endpoint, Untyped, init};
use keel_sys::invocations::{Args, invoke};

use crate::harness::{
    DEPTH, Env, FAULT_BADGE, OrFail, Suite, TestResult, Why, add_shared, expect_code, expect_err,
    pause, recv_timeout, set_shared, shared, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the untyped tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("untyped_retype_every_object_type", || every_type(env));
    suite.run("untyped_retype_sizes", || sizes(env));
    suite.run("untyped_retype_large_and_huge_frames", || big_frames(env));
    suite.run("untyped_retype_bad_arguments", || bad_arguments(env));
    suite.run("untyped_retype_into_full_slot_is_delete_first", || {
        full_slot(env)
    });
    suite.run("untyped_exhaustion_is_not_enough_memory", || {
        exhaustion(env)
    });
    suite.run("untyped_revoke_returns_memory_1000_times", || {
        revoke_returns(env)
    });
    suite.run("untyped_big_cnode_delete_and_revoke_return_memory", || {
        big_cnode(env)
    });
    suite.run(
        "untyped_endpoints_with_blocked_threads_delete_and_revoke_return_memory",
        || blocked_endpoints(env),
    );
    suite.run("untyped_copy_with_children_is_revoke_first", || {
        revoke_first(env)
    });
    suite.run("untyped_device_memory_only_becomes_frames", || device(env));
}

/// A fresh untyped of 2^bits bytes and the first of `slots` consecutive free slots.
fn fresh(env: &mut Env, bits: u64, slots: u64) -> Result<(Cap<Untyped>, u64), Why> {
    let ut = env.alloc.untyped(bits).or_fail("retype untyped")?;
    let first = env.alloc.slots.alloc_range(slots).or_fail("slots")?;
    Ok((ut, first))
}

fn tag_of(t: ObjectType) -> u64 {
    match t {
        ObjectType::Untyped => cap_tag::UNTYPED,
        ObjectType::Tcb => cap_tag::THREAD,
        ObjectType::Endpoint => cap_tag::ENDPOINT,
        ObjectType::Notification => cap_tag::NOTIFICATION,
        ObjectType::CapTable => cap_tag::CNODE,
        ObjectType::X86Pdpt => cap_tag::PDPT,
        ObjectType::X64Pml4 => cap_tag::PML4,
        ObjectType::X64HugePage | ObjectType::X86Page4K | ObjectType::X86LargePage => {
            cap_tag::FRAME
        }
        ObjectType::X86PageTable => cap_tag::PAGE_TABLE,
        ObjectType::X86PageDirectory => cap_tag::PAGE_DIRECTORY,
        ObjectType::KeelX86Ldt => cap_tag::KEEL_LDT,
    }
}

fn every_type(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 20, 16)?;
    let types = [
        (ObjectType::Tcb, 0),
        (ObjectType::Endpoint, 0),
        (ObjectType::Notification, 0),
        (ObjectType::CapTable, 4),
        (ObjectType::X86Pdpt, 0),
        (ObjectType::X64Pml4, 0),
        (ObjectType::X86Page4K, 0),
        (ObjectType::X86PageTable, 0),
        (ObjectType::X86PageDirectory, 0),
        (ObjectType::Untyped, 12),
    ];
    for (i, (t, size)) in types.iter().enumerate() {
        let slot = first + i as u64;
        ut.retype(*t, *size, init::CNODE, 0, 0, slot, 1)
            .or_fail(t.name())?;
        ensure!(
            env.has_tag(slot, tag_of(*t)),
            "{}: slot {slot} does not hold tag {}",
            t.name(),
            tag_of(*t)
        );
    }
    Ok(())
}

fn sizes(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 16, 24)?;
    let mut slot = first;
    for bits in [4u64, 5, 8, 11, 12] {
        ut.retype(ObjectType::Untyped, bits, init::CNODE, 0, 0, slot, 1)
            .or_fail("untyped size")?;
        slot += 1;
    }
    for radix in [1u64, 2, 6] {
        ut.retype(ObjectType::CapTable, radix, init::CNODE, 0, 0, slot, 1)
            .or_fail("cnode radix")?;
        slot += 1;
    }
    // Several objects at once, into consecutive slots.
    ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, slot, 8)
        .or_fail("8 endpoints")?;
    for s in slot..slot + 8 {
        ensure!(
            env.has_tag(s, cap_tag::ENDPOINT),
            "slot {s} of 8 not an endpoint"
        );
    }
    Ok(())
}

fn big_frames(env: &mut Env) -> TestResult {
    let largest = env.alloc.untyped.largest_bits();
    if largest < 22 {
        return Err(Why::Skipped("no untyped of 4 MiB"));
    }
    let f = env
        .alloc
        .frame(ObjectType::X86LargePage)
        .or_fail("2 MiB frame")?;
    ensure!(
        env.has_tag(f.cptr(), cap_tag::FRAME),
        "2 MiB frame is not a frame"
    );
    let a = f.get_address().or_fail("address")?;
    ensure!(a % (2 << 20) == 0, "2 MiB frame at {a:#x}");
    if largest >= 31 {
        let h = env
            .alloc
            .frame(ObjectType::X64HugePage)
            .or_fail("1 GiB frame")?;
        let a = h.get_address().or_fail("address")?;
        ensure!(a % (1 << 30) == 0, "1 GiB frame at {a:#x}");
    }
    Ok(())
}

fn bad_arguments(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 16, 4)?;
    expect_err(
        ut.retype(ObjectType::Untyped, 3, init::CNODE, 0, 0, first, 1),
        Error::InvalidArgument { index: 1 },
        "untyped of 2^3 bytes",
    )?;
    expect_err(
        ut.retype(ObjectType::Untyped, 48, init::CNODE, 0, 0, first, 1),
        Error::RangeError { min: 0, max: 47 },
        "untyped of 2^48 bytes",
    )?;
    expect_err(
        ut.retype(ObjectType::CapTable, 0, init::CNODE, 0, 0, first, 1),
        Error::InvalidArgument { index: 1 },
        "cnode of radix 0",
    )?;
    expect_err(
        ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, first, 0),
        Error::RangeError { min: 1, max: 256 },
        "zero objects",
    )?;
    expect_code(
        ut.retype(ObjectType::Untyped, 17, init::CNODE, 0, 0, first, 1),
        Code::NotEnoughMemory,
        "child bigger than the untyped",
    )?;
    let slots = 1u64 << env.info.cnode_size_bits();
    expect_code(
        ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, slots, 1),
        Code::RangeError,
        "offset past the cnode",
    )?;
    // An object type number that does not exist.
    let mut args = Args::new();
    for w in [99, 0, 0, 0, first, 1] {
        args.word(w);
    }
    args.cap(init::CNODE.cptr());
    expect_err(
        invoke(ut.cptr(), InvocationLabel::UntypedRetype, &args),
        Error::InvalidArgument { index: 0 },
        "object type 99",
    )?;
    // A destination that is not a CNode.
    let ep = env.endpoint()?;
    expect_code(
        ut.retype(ObjectType::Endpoint, 0, ep.cast(), 0, 0, first, 1),
        Code::FailedLookup,
        "root is an endpoint",
    )?;
    // Too short a message.
    let mut short = Args::new();
    short.word(ObjectType::Endpoint as u64);
    short.cap(init::CNODE.cptr());
    expect_err(
        invoke(ut.cptr(), InvocationLabel::UntypedRetype, &short),
        Error::TruncatedMessage,
        "one-word retype",
    )?;
    ensure!(env.is_empty(first), "a failed retype filled a slot");
    Ok(())
}

fn full_slot(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 12, 2)?;
    let ep = env.endpoint()?;
    init::CNODE
        .copy(
            first + 1,
            DEPTH,
            init::CNODE,
            ep.cptr(),
            DEPTH,
            keel_sys::CapRights::ALL,
        )
        .or_fail("fill slot")?;
    expect_err(
        ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, first, 2),
        Error::DeleteFirst,
        "retype over a full slot",
    )?;
    ensure!(env.is_empty(first), "partial retype");
    Ok(())
}

fn exhaustion(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 16, 17)?;
    ut.retype(ObjectType::X86Page4K, 0, init::CNODE, 0, 0, first, 16)
        .or_fail("16 frames")?;
    expect_err(
        ut.retype(ObjectType::X86Page4K, 0, init::CNODE, 0, 0, first + 16, 1),
        Error::NotEnoughMemory { available: 0 },
        "17th frame",
    )?;
    // A smaller object does not fit either.
    expect_code(
        ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, first + 16, 1),
        Code::NotEnoughMemory,
        "endpoint in a full untyped",
    )
}

fn revoke_returns(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 16, 16)?;
    for round in 0..1000 {
        if let Err(e) = ut.retype(ObjectType::X86Page4K, 0, init::CNODE, 0, 0, first, 16) {
            fail!("round {round}: retype of 16 frames: {e}");
        }
        if round % 100 == 0 {
            expect_code(
                ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, first, 1),
                Code::DeleteFirst,
                "slots full",
            )?;
        }
        if let Err(e) = init::CNODE.revoke(ut.cptr(), DEPTH) {
            fail!("round {round}: revoke: {e}");
        }
        if !env.is_empty(first) || !env.is_empty(first + 15) {
            fail!("round {round}: revoke left children");
        }
    }
    // Deleting the children one by one returns the memory too.
    ut.retype(ObjectType::X86Page4K, 0, init::CNODE, 0, 0, first, 16)
        .or_fail("after loop")?;
    for s in first..first + 16 {
        init::CNODE.delete(s, DEPTH).or_fail("delete child")?;
    }
    ut.retype(ObjectType::X86Page4K, 0, init::CNODE, 0, 0, first, 16)
        .or_fail("retype after deleting every child")
}

/// A 4096-slot CNode holding 1024 endpoints goes with its one capability (a deletion
/// long enough to stop at preemption points and be redone), then, rebuilt, with a
/// revoke of its untyped; each time the untyped retypes whole again (its reset zeroes
/// the memory in chunks, also preemptible).
fn big_cnode(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 20, 2)?;
    for round in 0..2 {
        ut.retype(ObjectType::CapTable, 12, init::CNODE, 0, 0, first, 1)
            .or_fail("big CNode")?;
        for k in 0..4 {
            ut.retype(
                ObjectType::Endpoint,
                0,
                init::CNODE,
                first,
                DEPTH.into(),
                k * 256,
                256,
            )
            .or_fail("endpoints into the big CNode")?;
        }
        if round == 0 {
            init::CNODE
                .delete(first, DEPTH)
                .or_fail("delete the big CNode")?;
            ensure!(env.is_empty(first), "the big CNode's slot is not empty");
        } else {
            init::CNODE.revoke(ut.cptr(), DEPTH).or_fail("revoke")?;
            ensure!(env.is_empty(first), "revoke left the big CNode");
        }
        ut.retype(ObjectType::Untyped, 20, init::CNODE, 0, 0, first + 1, 1)
            .or_fail("the whole untyped again")?;
        init::CNODE
            .revoke(ut.cptr(), DEPTH)
            .or_fail("revoke the whole")?;
    }
    Ok(())
}

/// Shared words of `blocked_endpoints`: the two endpoints' slots, then counters.
const SENDING_EP: usize = 10;
const RECEIVING_EP: usize = 11;
const STARTED: usize = 3;
const SENDS_RETURNED: usize = 0;
const CALLS_INVALID: usize = 1;
const WRONG: usize = 2;

/// Blocks in Send (argument 0) or Call (1) on the endpoint in word `SENDING_EP`. Once
/// the endpoint is deleted the thread redoes the system call on the now empty slot: a
/// Send returns with nothing done, a Call gets an InvalidCapability error reply.
fn blocked_sender(call: u64) {
    let ep = Cap::<Endpoint>::from_cptr(shared(SENDING_EP));
    add_shared(STARTED, 1);
    if call == 0 {
        ep.send(&Message::new(7).word(1));
        add_shared(SENDS_RETURNED, 1);
    } else {
        let r = ep.call(&Message::new(7).word(1));
        if r.label() == Code::InvalidCapability as u64 {
            add_shared(CALLS_INVALID, 1);
        } else {
            add_shared(WRONG, 1);
        }
    }
}

/// Blocks in Recv on the endpoint in word `RECEIVING_EP`; its redone Recv on the empty
/// slot is a capability fault, so it never gets past `recv`.
fn blocked_receiver(_: u64) {
    let ep = Cap::<Endpoint>::from_cptr(shared(RECEIVING_EP));
    add_shared(STARTED, 1);
    let _ = ep.recv();
    add_shared(WRONG, 1);
}

/// Threads blocked on two endpoints retyped from one untyped: deleting the first
/// (senders and callers) and revoking the untyped (which deletes the second, with its
/// receivers) aborts every blocked IPC as the unpreempted deletion does — each thread
/// redoes its system call on an empty slot — and the untyped is whole again. (The
/// runtime has 8 thread stacks; the host tests block 200 threads.)
fn blocked_endpoints(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 12, 2)?;
    ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, first, 2)
        .or_fail("two endpoints")?;
    set_shared(SENDING_EP, first);
    set_shared(RECEIVING_EP, first + 1);
    // Senders and callers alternate on the first endpoint, two receivers wait on the
    // second; as many as the free stacks allow (at least 4).
    let mut threads = alloc::vec::Vec::new();
    let (mut sends, mut calls, mut receivers) = (0u64, 0u64, 0u64);
    for i in 0..8u64 {
        let spawned = if i < 2 {
            receivers += 1;
            env.spawn(blocked_receiver, 0, CHILD_PRIORITY)
        } else {
            if i % 2 == 0 {
                sends += 1;
            } else {
                calls += 1;
            }
            env.spawn(blocked_sender, i % 2, CHILD_PRIORITY)
        };
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) if threads.len() >= 4 => {
                // Out of stacks: undo the count of the thread that did not start.
                if i < 2 {
                    receivers -= 1;
                } else if i % 2 == 0 {
                    sends -= 1;
                } else {
                    calls -= 1;
                }
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let result = (|| {
        let n = threads.len() as u64;
        ensure!(
            wait_until(|| shared(STARTED) == n),
            "{} of {n} threads started",
            shared(STARTED)
        );
        // Let them reach their system calls and block.
        pause(50_000_000);
        ensure!(
            shared(SENDS_RETURNED) + shared(CALLS_INVALID) + shared(WRONG) == 0,
            "a thread got past its blocking system call"
        );
        init::CNODE
            .delete(first, DEPTH)
            .or_fail("delete the endpoint with senders")?;
        ensure!(env.is_empty(first), "the endpoint's slot is not empty");
        ensure!(
            wait_until(|| shared(SENDS_RETURNED) == sends && shared(CALLS_INVALID) == calls),
            "after the delete: {} of {sends} Sends returned, {} of {calls} Calls got InvalidCapability",
            shared(SENDS_RETURNED),
            shared(CALLS_INVALID)
        );
        init::CNODE
            .revoke(ut.cptr(), DEPTH)
            .or_fail("revoke the untyped under the receivers")?;
        ensure!(env.is_empty(first + 1), "revoke left the second endpoint");
        for k in 0..receivers {
            let Some(r) = recv_timeout(env.fault_ep) else {
                fail!("no fault from restarted receiver {k} of {receivers}")
            };
            ensure!(r.badge == FAULT_BADGE, "fault badge {:#x}", r.badge);
            ensure!(
                r.label() == FaultType::CapFault as u64,
                "fault label {}",
                r.label()
            );
            let w = r.words::<4>();
            ensure!(
                w[cap_fault::ADDR] == first + 1 && w[cap_fault::IN_RECV_PHASE] == 1,
                "cap fault at {:#x}, in receive phase {}",
                w[cap_fault::ADDR],
                w[cap_fault::IN_RECV_PHASE]
            );
        }
        ensure!(
            shared(WRONG) == 0,
            "a thread got a message or a wrong error"
        );
        // The memory is free: the whole untyped can be retyped again.
        ut.retype(ObjectType::Untyped, 12, init::CNODE, 0, 0, first, 1)
            .or_fail("the whole untyped again")?;
        init::CNODE
            .revoke(ut.cptr(), DEPTH)
            .or_fail("revoke the whole")
    })();
    for t in threads {
        env.destroy(t)?;
    }
    result
}

fn revoke_first(env: &mut Env) -> TestResult {
    let (ut, first) = fresh(env, 12, 2)?;
    ut.retype(ObjectType::Endpoint, 0, init::CNODE, 0, 0, first, 1)
        .or_fail("child")?;
    expect_err(
        init::CNODE.copy(
            first + 1,
            DEPTH,
            init::CNODE,
            ut.cptr(),
            DEPTH,
            keel_sys::CapRights::ALL,
        ),
        Error::RevokeFirst,
        "copy of an untyped with children",
    )?;
    init::CNODE.revoke(ut.cptr(), DEPTH).or_fail("revoke")?;
    init::CNODE
        .copy(
            first + 1,
            DEPTH,
            init::CNODE,
            ut.cptr(),
            DEPTH,
            keel_sys::CapRights::ALL,
        )
        .or_fail("copy after revoke")
}

fn device(env: &mut Env) -> TestResult {
    let Some(dev) = env
        .info
        .untypeds()
        .find(|u| u.is_device() && u.size_bits() >= 12)
    else {
        return Err(Why::Skipped("no device untyped"));
    };
    let ut = Cap::<Untyped>::from_cptr(dev.slot);
    let s = env.slot()?;
    expect_code(
        ut.retype(ObjectType::Tcb, 0, init::CNODE, 0, 0, s, 1),
        Code::InvalidArgument,
        "TCB from device memory",
    )?;
    ut.retype(ObjectType::X86Page4K, 0, init::CNODE, 0, 0, s, 1)
        .or_fail("frame from device memory")?;
    init::CNODE.delete(s, DEPTH).or_fail("delete")?;
    init::CNODE.revoke(ut.cptr(), DEPTH).or_fail("revoke")
}
