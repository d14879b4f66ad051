//! The probe program: a server program the on-target tests load with init's loader to
//! check what a loaded server can and cannot do. Its argument's low byte is the
//! [`Mode`]; it reports on the endpoint in its `SERVE` slot (a Send with the words
//! below) and then faults with an undefined instruction (its fault endpoint tells the
//! test it is done).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use keel_abi::object::ObjectType;
use keel_servers::cspace::slot;
use keel_sys::cap::{CNode, Cap, Endpoint, Untyped};
use keel_sys::{Message, probe};

keel_servers::server_program!(probe_main);

/// Mode 1: write its own text (a read-only mapping faults; if it returns, it sends
/// label 1).
const WRITE_TEXT: u64 = 1;
/// Mode 2: retype its spare untyped ([`slot::UNTYPED`]) into the largest untyped the
/// kernel allows (trying 2^30 down to 2^12 bytes), then a 4 KiB frame more; sends
/// label 2 with the size in bits it got (0: none) and whether the frame was refused
/// (1) or made (0).
const USE_BUDGET: u64 = 2;

/// Mode 3: recurse until the stack overflows (into an unmapped guard page: a VM fault).
const OVERFLOW_STACK: u64 = 3;

/// Uses 1 KiB of stack per level, as good as for ever.
fn deeper(level: u64) -> u64 {
    if level == u64::MAX {
        return 0;
    }
    let frame = core::hint::black_box([level; 128]);
    frame[(level % 128) as usize] + deeper(level + 1)
}

fn probe_main(argument: u64) {
    let report = Cap::<Endpoint>::from_cptr(slot::SERVE);
    match argument & 0xff {
        WRITE_TEXT => {
            probe::write_own_text();
            report.send(&Message::new(WRITE_TEXT));
        }
        USE_BUDGET => {
            let spare = Cap::<Untyped>::from_cptr(slot::UNTYPED);
            let own = Cap::<CNode>::from_cptr(slot::CNODE);
            let (first, second) = (slot::FIRST_FREE, slot::FIRST_FREE + 1);
            let got = (12..=30u64)
                .rev()
                .find(|&bits| {
                    spare
                        .retype(ObjectType::Untyped, bits, own, 0, 0, first, 1)
                        .is_ok()
                })
                .unwrap_or(0);
            let frame = spare.retype(ObjectType::X86Page4K, 0, own, 0, 0, second, 1);
            report.send(&Message::new(USE_BUDGET).words(&[got, frame.is_err() as u64]));
        }
        OVERFLOW_STACK => {
            let depth = deeper(0);
            report.send(&Message::new(OVERFLOW_STACK).words(&[depth]));
        }
        _ => {}
    }
    probe::ud2();
}
