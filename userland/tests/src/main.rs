//! The root task of the test image: the on-target test suite, sel4test-style. Each
//! test is a named function that prints exactly one `test NAME ... ok`,
//! `test NAME ... FAILED: why` or `test NAME ... skipped (why)` line; the counts go to
//! the kernel, which prints the summary.
//!
//! The root task lowers its priority to [`ROOT_PRIORITY`] so that the threads a test
//! creates (at [`CHILD_PRIORITY`] unless the test says otherwise) run whenever they
//! can; it never blocks on something a broken kernel might never deliver: it polls
//! with a time limit ([`harness::wait_until`], [`harness::recv_timeout`]). Fault
//! handling tests give their threads the suite's fault endpoint and play the handler.
#![no_std]
#![no_main]
// Failure messages are fixed-size buffers (no heap: the `runtime_*` tests test it);
// their size in `Err` is fine here.
#![allow(clippy::result_large_err)]

extern crate alloc;

mod bootinfo;
mod cspace;
mod entry_hazards;
mod entry_state;
mod errors;
mod faults;
mod fpu;
mod fuzz;
mod gsbase;
mod harness;
mod ipc;
mod programs;
mod rseq;
mod runtime;
mod servers;
mod threads;
mod untyped;
mod user;
mod vspace;

use keel_rt::println;
use keel_sys::cap::init;

use harness::{Env, Suite};

keel_sys::entry_point!(main);

/// Exit value the kernel expects from this suite when it ran to the end.
const DONE: u64 = 0x600d;
/// The root task's priority while the suite runs.
pub const ROOT_PRIORITY: u64 = 50;
/// Default priority of the threads tests create.
pub const CHILD_PRIORITY: u8 = 100;

fn main(argument: u64) -> u64 {
    let mut suite = Suite::default();
    user::run(&mut suite, argument);
    match keel_rt::init(argument) {
        None => println!("(no boot info from the kernel: object-model tests not run)"),
        Some(info) => {
            if let Err(e) = init::TCB.set_priority(init::TCB, ROOT_PRIORITY) {
                println!("(cannot lower the root task's priority: {e})");
            }
            match Env::new(info) {
                Ok(mut env) => {
                    cspace::run(&mut suite, &mut env);
                    bootinfo::run(&mut suite, &mut env);
                    untyped::run(&mut suite, &mut env);
                    threads::run(&mut suite, &mut env);
                    ipc::run(&mut suite, &mut env);
                    faults::run(&mut suite, &mut env);
                    fpu::run(&mut suite, &mut env);
                    entry_hazards::run(&mut suite, &mut env);
                    entry_state::run(&mut suite, &mut env);
                    vspace::run(&mut suite, &mut env);
                    vspace::run_devices(&mut suite, &mut env);
                    gsbase::run(&mut suite, &mut env);
                    rseq::run(&mut suite, &mut env);
                    servers::run(&mut suite, &mut env);
                    programs::run(&mut suite, &mut env);
                    runtime::run(&mut suite, &mut env);
                    errors::run(&mut suite, &mut env);
                    fuzz::run(&mut suite, &mut env);
                }
                Err(e) => {
                    suite.fail_setup(e);
                }
            }
        }
    }
    keel_sys::debug_test_report(suite.passed, suite.failed);
    DONE
}
