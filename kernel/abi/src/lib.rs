//! Keel's user/kernel ABI: the numbers both sides of the system-call boundary agree on.
//!
//! This crate owns every constant that crosses the boundary between the kernel, user
//! programs and the host runner: system-call numbers, the registers they use, the
//! isa-debug-exit status codes and the serial lines the host harness parses. It has no
//! code with side effects and no `unsafe`; the kernel, `userland/sys` and the runner all
//! depend on it so that each number is written down exactly once.
//!
//! Invariant: numbers shared with seL4 keep seL4's values (x86-64, non-MCS); numbers
//! that are Keel's own live in ranges seL4 does not use.
#![no_std]

pub mod exit;
pub mod harness;
pub mod syscall;
