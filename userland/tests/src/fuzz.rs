//! Hostile user code against the whole system-call interface: a confined thread makes
//! thousands of seeded-random system calls (seL4's eight and unknown numbers; random
//! capability pointers, labels, lengths, extra capabilities and words, biased toward
//! values that mean something: slot numbers, depth 64, object types, small sizes) on
//! the capabilities of a CSpace of its own, which holds only objects made for it from
//! an untyped of its own. The kernel must answer each with a reply, an error or a
//! fault; none may take it down, leave the suite unable to go on, or lose memory: when
//! the thread and its CSpace are gone, its untyped's memory retypes again in full.
//!
//! Keel's debug calls are left out (they report test results and switch the fastpath).
//! A call that blocks for good (a Recv nobody sends to) or a fault (the suite does not
//! answer faults) stops the thread; the suite then suspends it and writes it its first
//! registers again (WriteRegisters with resume), and it carries on where it stopped
//! (the step and the generator's state live in shared words and are advanced before
//! each call). The thread has no capability to its own TCB: with one it could give
//! itself a random RIP and run the suite's code, which shares its address space.
//!
//! This test found that a Call on a notification or a reply capability left the
//! caller's own message in its registers instead of seL4's empty reply.

use keel_abi::invocation;
use keel_abi::message::MessageInfo;
use keel_abi::object::ObjectType;
use keel_abi::syscall as number;
use keel_servers::cspace::{ServerCSpace, slot};
use keel_sys::CapRights;
use keel_sys::cap::init;

use crate::harness::{DEPTH, Env, OrFail, Suite, TestResult, add_shared, set_shared, shared};
use crate::{CHILD_PRIORITY, ensure};

/// Runs the fuzz test.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("fuzz_random_system_calls_keep_the_kernel_whole", || {
        fuzz(env)
    });
}

/// System calls the thread makes in all.
const CALLS: u64 = 10000;
/// The generator's seed (printed on failure).
const SEED: u64 = 0x6b65_656c_f022_1e57;
/// Free slots of the thread's CSpace (its CNode then has 32 slots).
const FREE: u64 = 23;
/// Slots of the thread's CNode.
const SLOTS: u64 = 32;
/// Size of the thread's untyped (64 KiB).
const UNTYPED_BITS: u64 = 16;

/// Shared words: the next step, the generator's state, done, and the outcomes of Calls
/// (label 0, an seL4 error 1-10, anything else) and of the other system calls.
const STEP: usize = 0;
const STATE: usize = 1;
const DONE: usize = 2;
const REPLIED: usize = 3;
const ERRORS: usize = 4;
const OTHER_LABELS: usize = 5;
const NOT_CALLS: usize = 6;

fn next(state: &mut u64) -> u64 {
    // xorshift64*
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A word that often means something to a decoder.
fn word(state: &mut u64) -> u64 {
    let r = next(state);
    match r % 10 {
        0..=2 => r >> 8 & (SLOTS - 1),
        3 => 64,
        4 => r >> 8 & 15,
        5 => 1 << (r >> 8 & 63),
        6 => 0,
        7 => u64::MAX,
        8 => (r >> 8 & 0xffff) << 12,
        _ => r,
    }
}

/// A capability pointer: mostly a slot of the thread's CNode.
fn cptr(state: &mut u64) -> u64 {
    let r = next(state);
    match r % 100 {
        0 => r,
        1 => r >> 8 & (SLOTS - 1) | 1 << 40,
        _ => r >> 8 & (SLOTS - 1),
    }
}

/// One of the free slots of the thread's CNode, from the low bits of `r`.
fn free_slot(r: u64) -> u64 {
    slot::FIRST_FREE + (r & 31) % (SLOTS - slot::FIRST_FREE)
}

/// The confined thread: makes system calls from where the last one stopped.
fn fuzzer(_: u64) {
    loop {
        let step = shared(STEP);
        if step >= CALLS {
            set_shared(DONE, 1);
            // Stops here for good (a receive on the null slot is a capability fault,
            // which the suite leaves unanswered): returning would make the runtime
            // suspend the thread through its own TCB capability, which it has not got.
            loop {
                keel_sys::syscall::recv(0);
            }
        }
        let mut state = shared(STATE);
        let r = next(&mut state);
        let syscall = match r % 100 {
            0..=54 => number::CALL,
            55..=69 => number::NB_SEND,
            70..=79 => number::NB_RECV,
            80..=83 => number::SEND,
            84..=86 => number::RECV,
            87..=90 => number::REPLY,
            91..=93 => number::REPLY_RECV,
            94..=95 => number::YIELD,
            _ => (next(&mut state) % 1000) as i64,
        };
        let r = next(&mut state);
        let mut label = if r.is_multiple_of(10) {
            r >> 12
        } else {
            r % (invocation::COUNT + 2)
        };
        let mut length = match next(&mut state) % 8 {
            0 => next(&mut state) % 121,
            n => n - 1,
        };
        let mut extra = next(&mut state) % 4;
        let mut dest = cptr(&mut state);
        let mut mrs = [
            word(&mut state),
            word(&mut state),
            word(&mut state),
            word(&mut state),
        ];
        for i in 0..extra as usize {
            keel_sys::ipc::set_cap(i, cptr(&mut state));
        }
        for i in 4..length.min(24) as usize {
            keel_sys::ipc::set_buffer_mr(i, word(&mut state));
        }
        // Two Calls in five are shaped like a real Retype or CNode operation (random
        // values in the right places, on the free slots: the CNode and untyped
        // capabilities they use stay), so that objects come and go.
        let shape = next(&mut state);
        if syscall == number::CALL && shape % 5 < 2 {
            extra = 1;
            keel_sys::ipc::set_cap(0, slot::CNODE);
            if shape.is_multiple_of(5) {
                // Retype: type, size bits, node index 0 and depth 0 (the root CNode
                // itself), then offset and count in the buffer.
                (dest, label, length) = (slot::UNTYPED, 1, 6);
                mrs = [shape >> 8 & 15, shape >> 12 & 15, 0, 0];
                keel_sys::ipc::set_buffer_mr(4, free_slot(shape >> 16));
                keel_sys::ipc::set_buffer_mr(5, 1 + (shape >> 24 & 3));
            } else {
                // A CNode operation on slots of its own CNode at depth 64.
                (dest, label, length) = (slot::CNODE, 22 + (shape >> 8) % 9, 8);
                mrs = [free_slot(shape >> 12), 64, free_slot(shape >> 18), 64];
                keel_sys::ipc::set_buffer_mr(4, shape >> 24 & 15);
                keel_sys::ipc::set_buffer_mr(5, free_slot(shape >> 28));
                keel_sys::ipc::set_buffer_mr(6, 64);
                keel_sys::ipc::set_buffer_mr(7, free_slot(shape >> 34));
            }
        }
        let info = MessageInfo::new(label, 0, extra, length);
        // Advanced before the call: a restarted thread goes on after it.
        set_shared(STATE, state);
        set_shared(STEP, step + 1);
        let got = keel_sys::syscall::with_number(syscall, dest, info, mrs);
        if syscall == number::CALL {
            match got.info.label() {
                0 => add_shared(REPLIED, 1),
                1..=10 => add_shared(ERRORS, 1),
                _ => add_shared(OTHER_LABELS, 1),
            };
        } else {
            add_shared(NOT_CALLS, 1);
        }
    }
}

fn fuzz(env: &mut Env) -> TestResult {
    set_shared(STATE, SEED);
    // Its own memory, and objects made from it (their capabilities also in the suite's
    // CNode, deleted with the CSpace's copies below).
    let untyped = env.alloc.untyped(UNTYPED_BITS).or_fail("untyped")?;
    let ep = env.endpoint()?;
    let notification = env.notification()?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let space = ServerCSpace::new(&mut env.alloc, FREE).or_fail("cspace")?;
    ensure!(space.size() == SLOTS, "{} slots", space.size());
    space
        .mint(slot::FAULT, env.fault_ep, CapRights::ALL, 0xf022)
        .or_fail("fault endpoint")?;
    space
        .copy(slot::SERVE, ep, CapRights::ALL)
        .or_fail("endpoint")?;
    space
        .copy(slot::UNTYPED, untyped, CapRights::ALL)
        .or_fail("untyped copy")?;
    space
        .mint(slot::FIRST_FREE, ep, CapRights::ALL, 5)
        .or_fail("badged endpoint")?;
    space
        .copy(slot::FIRST_FREE + 1, notification, CapRights::ALL)
        .or_fail("notification")?;
    space
        .mint(slot::FIRST_FREE + 2, notification, CapRights::ALL, 3)
        .or_fail("badged notification")?;
    space
        .copy(slot::FIRST_FREE + 3, frame, CapRights::ALL)
        .or_fail("frame")?;
    let start = keel_servers::StartInfo {
        serve: slot::SERVE,
        slots: slot::FIRST_FREE,
        slot_count: FREE,
        ..keel_servers::StartInfo::default()
    };
    let config = keel_rt::ThreadConfig {
        priority: CHILD_PRIORITY,
        fault_ep: slot::FAULT,
        affinity: None,
        cspace: Some(space.thread_cspace()),
    };
    let mut restarts = 0u64;
    let mut faults = 0u64;
    let started = keel_sys::rdtsc();
    // Slot 1 takes the thread's TCB capability, which is taken out again before it
    // runs: with its own TCB the thread could write itself a random RIP and run the
    // suite's code, which shares its address space.
    let thread = env
        .alloc
        .create_thread(fuzzer, start.pack(), config)
        .or_fail("create the fuzzing thread")?;
    let result = (|| {
        space
            .cnode
            .delete(slot::TCB, DEPTH)
            .or_fail("take the thread's own TCB capability away")?;
        let words = keel_abi::fault::USER_CONTEXT_WORDS;
        let initial = thread
            .tcb
            .read_registers(false, 0, words)
            .or_fail("read the thread's first registers")?;
        thread.start().or_fail("start the fuzzing thread")?;
        // The thread runs at a higher priority, on this CPU: the suite runs again only
        // when it has stopped (blocked for good, or stopped by a fault the suite does
        // not answer) or is done.
        loop {
            while env.fault_ep.nb_recv().is_some() {
                faults += 1;
            }
            if shared(DONE) != 0 {
                break;
            }
            // Started again from its entry: it carries on from the shared step.
            restarts += 1;
            thread.tcb.suspend().or_fail("suspend the fuzzing thread")?;
            thread
                .tcb
                .write_registers(true, 0, words, &initial)
                .or_fail("restart the fuzzing thread")?;
            ensure!(
                keel_sys::rdtsc().wrapping_sub(started) < 20 * crate::harness::TIMEOUT_TSC,
                "seed {SEED:#x}: step {} of {CALLS} after {restarts} restarts: too slow",
                shared(STEP)
            );
        }
        Ok(())
    })();
    env.destroy(thread)?;
    // Everything the thread had goes: its CSpace (with every object it made), then the
    // objects made for it.
    space.destroy(&mut env.alloc).or_fail("delete the cspace")?;
    env.alloc.delete(frame).or_fail("delete the frame")?;
    init::CNODE
        .delete(ep.cptr(), DEPTH)
        .or_fail("delete the endpoint")?;
    init::CNODE
        .delete(notification.cptr(), DEPTH)
        .or_fail("delete the notification")?;
    result?;
    // The untyped's memory is whole again: one object of its full size fits.
    init::CNODE
        .revoke(untyped.cptr(), DEPTH)
        .or_fail("revoke the untyped")?;
    let whole = env.slot()?;
    let again = untyped.retype(
        ObjectType::Untyped,
        UNTYPED_BITS,
        init::CNODE,
        0,
        0,
        whole,
        1,
    );
    ensure!(
        again.is_ok(),
        "seed {SEED:#x}: the untyped does not retype in full afterwards: {again:?}"
    );
    init::CNODE
        .delete(whole, DEPTH)
        .or_fail("delete the retyped untyped")?;
    env.alloc.delete(untyped).or_fail("delete the untyped")?;
    let (replied, errors, others, not_calls) = (
        shared(REPLIED),
        shared(ERRORS),
        shared(OTHER_LABELS),
        shared(NOT_CALLS),
    );
    // A Call that returns is answered by the kernel (nobody here answers one on an
    // endpoint): a success (label 0) or one of seL4's errors, never anything else.
    ensure!(
        others == 0,
        "seed {SEED:#x}: {others} Calls came back with a label that is neither 0 nor an error"
    );
    ensure!(
        replied > 0 && errors > 0 && not_calls > 0,
        "seed {SEED:#x}: {replied} successful Calls, {errors} errors, {others} other labels, \
         {not_calls} other calls, {faults} faults, {restarts} restarts: some kind never happened"
    );
    keel_sys::debug_put_string(
        alloc::format!(
            "  fuzz: {CALLS} calls, seed {SEED:#x}: {replied} replied, {errors} errors, {others} \
             other labels, {not_calls} not Calls, {faults} faults, {restarts} restarts\n"
        )
        .as_bytes(),
    );
    Ok(())
}
