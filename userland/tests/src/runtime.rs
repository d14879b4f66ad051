//! The runtime's heap and typed IPC (`runtime_*`): `alloc` collections on the global
//! allocator, large allocations, exhaustion reported as an error by the fallible calls;
//! the runtime's one-word reply types (`u64`, `Option<u64>`) encoded and decoded;
//! a small service on `keel_rt::protocol::serve` answering a typed request, a malformed
//! one and an unknown label.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use keel_rt::heap::heap_stats;
use keel_rt::protocol::{self, Answer, Error, Request, Service};
use keel_sys::cap::{Cap, Endpoint};
use keel_sys::heap::HEAP_BYTES;
use keel_sys::{Message, Received};

use crate::CHILD_PRIORITY;
use crate::harness::{Env, Suite, TestResult, recv_timeout, set_shared, shared};
use crate::{ensure, fail};

/// Runs the `runtime_*` tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run(
        "runtime_heap_collections_allocate_and_free",
        heap_collections,
    );
    suite.run("runtime_heap_large_allocations", heap_large);
    suite.run("runtime_heap_exhaustion_reported", heap_exhaustion);
    suite.run("runtime_heap_exhausted_thread_panics_and_faults", || {
        out_of_heap_faults(env)
    });
    suite.run("runtime_protocol_error_codes_round_trip", || {
        let all = [
            Error::UnknownLabel,
            Error::BadRequest,
            Error::NotFound,
            Error::Exists,
            Error::Full,
            Error::Busy,
            Error::PortRefused,
            Error::Unsupported,
            Error::StillRunning,
            Error::BadReply,
            Error::Other(0x99),
        ];
        for e in all {
            ensure!(e.code() != protocol::OK, "{e:?} has the OK label");
            ensure!(Error::from_code(e.code()) == e, "{e:?} does not round trip");
        }
        Ok(())
    });
    suite.run("runtime_protocol_one_word_replies", one_word_replies);
    suite.run("runtime_protocol_typed_request_and_unknown_label", || {
        protocol_service(env)
    });
}

fn heap_collections() -> TestResult {
    let before = heap_stats();
    {
        let mut numbers: Vec<u64> = Vec::new();
        for i in 0..10_000u64 {
            numbers.push(i * 3);
        }
        numbers.retain(|n| n % 2 == 0);
        ensure!(
            numbers.len() == 5000 && numbers[4999] == 9998 * 3,
            "a Vec lost values"
        );
        let mut map = BTreeMap::new();
        for i in 0..500u64 {
            map.insert(i.to_string(), Box::new(i));
        }
        for i in (0..500u64).step_by(2) {
            map.remove(&i.to_string());
        }
        ensure!(
            map.len() == 250 && map.get("499").map(|b| **b) == Some(499),
            "a BTreeMap of boxes lost entries"
        );
        let mut text = String::new();
        for word in ["keel", "heap", "string"] {
            text.push_str(word);
            text.push(' ');
        }
        ensure!(text == "keel heap string ", "a String: {text:?}");
        // Interleaved lifetimes: free every other box, then allocate again.
        let mut boxes: Vec<Option<Box<[u8; 100]>>> =
            (0..200).map(|i| Some(Box::new([i as u8; 100]))).collect();
        for b in boxes.iter_mut().step_by(2) {
            *b = None;
        }
        for (i, b) in boxes.iter_mut().enumerate().step_by(2) {
            *b = Some(Box::new([!(i as u8); 100]));
        }
        ensure!(
            boxes.iter().enumerate().all(|(i, b)| {
                let want = if i % 2 == 0 { !(i as u8) } else { i as u8 };
                b.as_ref().is_some_and(|b| b.iter().all(|&x| x == want))
            }),
            "boxes overlap"
        );
        ensure!(
            heap_stats().allocated > before.allocated,
            "the heap counted nothing"
        );
    }
    let after = heap_stats();
    ensure!(
        after.allocated == before.allocated && after.requested == before.requested,
        "not all given back: {before:?} then {after:?}"
    );
    ensure!(
        after.total == HEAP_BYTES,
        "the heap manages {} bytes, not {HEAP_BYTES}",
        after.total
    );
    Ok(())
}

fn heap_large() -> TestResult {
    let before = heap_stats();
    for round in 0..3u8 {
        let mut big: Vec<u8> = Vec::new();
        if big.try_reserve_exact(HEAP_BYTES / 2).is_err() {
            fail!(
                "round {round}: half the heap ({} bytes) refused",
                HEAP_BYTES / 2
            );
        }
        big.resize(HEAP_BYTES / 2, round);
        let quarter: Vec<u64> = (0..HEAP_BYTES as u64 / 32).collect();
        ensure!(
            big.iter().all(|&b| b == round)
                && quarter.iter().enumerate().all(|(i, &v)| v == i as u64),
            "round {round}: large allocations overlap"
        );
    }
    ensure!(
        heap_stats().allocated == before.allocated,
        "large allocations not given back"
    );
    Ok(())
}

fn heap_exhaustion() -> TestResult {
    let before = heap_stats();
    let mut too_big: Vec<u8> = Vec::new();
    ensure!(
        too_big.try_reserve(2 * HEAP_BYTES).is_err(),
        "twice the heap was granted"
    );
    // Fill the heap with 4 KiB blocks until it says no, then give them all back.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    ensure!(
        blocks.try_reserve(HEAP_BYTES / 4096).is_ok(),
        "no room for the list"
    );
    loop {
        let mut block = Vec::new();
        if block.try_reserve_exact(4096).is_err() || blocks.len() == blocks.capacity() {
            break;
        }
        block.push(blocks.len() as u8);
        blocks.push(block);
    }
    let filled = blocks.len();
    ensure!(
        (HEAP_BYTES / 4096 / 2..HEAP_BYTES / 4096).contains(&filled),
        "{filled} blocks of 4 KiB in a heap of {HEAP_BYTES} bytes"
    );
    let full = heap_stats();
    drop(blocks);
    let mut again: Vec<u8> = Vec::new();
    ensure!(
        again.try_reserve_exact(HEAP_BYTES / 2).is_ok(),
        "after an exhaustion ({full:?}) the freed memory did not come back"
    );
    drop(again);
    ensure!(
        heap_stats().allocated == before.allocated,
        "not all given back after exhaustion"
    );
    Ok(())
}

/// Asks for more than the heap has, infallibly (shared word 0 stays 0 if the thread
/// stops there).
fn greedy(_: u64) {
    // black_box: the pointer escapes, so the allocation cannot be optimised away.
    let v: Vec<u8> =
        core::hint::black_box(Vec::with_capacity(core::hint::black_box(2 * HEAP_BYTES)));
    set_shared(0, v.as_ptr() as u64);
}

/// An allocation that cannot be met is not a hang: the thread prints the panic and
/// faults (#UD), and its fault handler (here the suite) hears of it.
fn out_of_heap_faults(env: &mut Env) -> TestResult {
    let before = heap_stats();
    let thread = env.spawn(greedy, 0, CHILD_PRIORITY)?;
    let fault = recv_timeout(env.fault_ep);
    env.destroy(thread)?;
    let Some(fault) = fault else {
        fail!("no fault from the thread that ran out of heap")
    };
    ensure!(
        fault.label() == keel_abi::fault::FaultType::UserException as u64
            && fault.words::<5>()[keel_abi::fault::user_exception::NUMBER] == 6,
        "fault label {}: not the panic's #UD",
        fault.label()
    );
    ensure!(shared(0) == 0, "the allocation of twice the heap succeeded");
    ensure!(
        heap_stats().allocated == before.allocated,
        "the failed allocation left memory allocated"
    );
    Ok(())
}

/// The test protocol: `ADD` of two words, answered with their sum.
const ADD: u64 = 0xadd;

#[derive(Debug, PartialEq, Eq)]
enum TestRequest {
    Add(u64, u64),
}

#[derive(Debug, PartialEq, Eq)]
struct Sum(u64);

impl Request for TestRequest {
    type Reply = Sum;

    fn encode(&self) -> Message {
        let Self::Add(a, b) = self;
        Message::new(ADD).words(&[*a, *b])
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match message.label() {
            ADD if message.length() == 2 => Ok(Self::Add(message.mr(0), message.mr(1))),
            ADD => Err(Error::BadRequest),
            _ => Err(Error::UnknownLabel),
        }
    }
}

impl protocol::Reply for Sum {
    fn encode(&self) -> Message {
        Message::new(protocol::OK).word(self.0)
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match message.length() {
            1 => Ok(Self(message.mr(0))),
            _ => Err(Error::BadReply),
        }
    }
}

struct Adder;

impl Service for Adder {
    type Request = TestRequest;

    fn handle(&mut self, request: TestRequest, badge: u64) -> Answer<Sum> {
        let TestRequest::Add(a, b) = request;
        // A badge makes the service refuse: a typed error of the service's own.
        match badge {
            0 => Answer::Now(Ok(Sum(a.wrapping_add(b)))),
            _ => Answer::Now(Err(Error::Busy)),
        }
    }
}

fn adder(endpoint: u64) {
    protocol::serve(Cap::<Endpoint>::from_cptr(endpoint), &mut Adder)
}

fn protocol_service(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let badged = env.mint(ep, keel_sys::CapRights::ALL, 7)?;
    let server = env.spawn(adder, ep.cptr(), CHILD_PRIORITY)?;
    let result = (|| {
        for i in 0..100u64 {
            let sum = protocol::call(ep, &TestRequest::Add(i, 1000 * i));
            ensure!(sum == Ok(Sum(1001 * i)), "add {i}: {sum:?}");
        }
        let unknown = protocol::decode_reply::<Sum>(&ep.call(&Message::new(0x5eed).word(1)));
        ensure!(
            unknown == Err(Error::UnknownLabel),
            "an unknown label got {unknown:?}"
        );
        let malformed = protocol::decode_reply::<Sum>(&ep.call(&Message::new(ADD).word(1)));
        ensure!(
            malformed == Err(Error::BadRequest),
            "a one-word ADD got {malformed:?}"
        );
        let refused = protocol::call(badged, &TestRequest::Add(1, 2));
        ensure!(refused == Err(Error::Busy), "a badged ADD got {refused:?}");
        // The service still answers after the errors.
        let sum = protocol::call(ep, &TestRequest::Add(40, 2));
        ensure!(sum == Ok(Sum(42)), "after the errors: {sum:?}");
        Ok(())
    })();
    env.destroy(server)?;
    result
}

/// What `reply` looks like to the client: the message as received, without the IPC
/// (words 0-3 travel in registers).
fn as_received(reply: &Message) -> Received {
    let (info, regs) = reply.prepare();
    Received {
        info,
        badge: 0,
        regs,
    }
}

/// `u64` and `Option<u64>` as reply types: label `OK`, one word or none, and back.
fn one_word_replies() -> TestResult {
    use protocol::Reply;

    for word in [0, 1, 0x1234_5678_9abc_def0, u64::MAX] {
        let message = word.encode();
        ensure!(
            message.label() == protocol::OK && message.as_words() == [word],
            "u64 {word:#x} encodes as {message:?}"
        );
        let decoded = <u64 as Reply>::decode(&as_received(&message));
        ensure!(decoded == Ok(word), "u64 {word:#x} decodes as {decoded:?}");
        let message = Some(word).encode();
        ensure!(
            message.label() == protocol::OK && message.as_words() == [word],
            "Some({word:#x}) encodes as {message:?}"
        );
        let decoded = <Option<u64> as Reply>::decode(&as_received(&message));
        ensure!(
            decoded == Ok(Some(word)),
            "Some({word:#x}) decodes as {decoded:?}"
        );
    }
    let none = None::<u64>.encode();
    ensure!(
        none.label() == protocol::OK && none.as_words().is_empty(),
        "None encodes as {none:?}"
    );
    let decoded = <Option<u64> as Reply>::decode(&as_received(&none));
    ensure!(decoded == Ok(None), "None decodes as {decoded:?}");
    // A u64 reply without its word is malformed, and an error label is the error.
    let decoded = <u64 as Reply>::decode(&as_received(&Message::new(protocol::OK)));
    ensure!(
        decoded == Err(Error::BadReply),
        "an empty u64 reply decodes as {decoded:?}"
    );
    let refused = as_received(&protocol::reply_message::<Option<u64>>(&Err(Error::Full)));
    let decoded = protocol::decode_reply::<Option<u64>>(&refused);
    ensure!(
        decoded == Err(Error::Full),
        "a Full reply decodes as {decoded:?}"
    );
    Ok(())
}
