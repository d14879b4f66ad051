//! The system calls the kernel has before the object model: Keel's debug calls.

use keel_abi::syscall::*;
use keel_hal as hal;
use keel_hal::trap::TrapFrame;
use keel_hal::user::UserExit;
use keel_kern::testing::Tally;
use spin::Mutex;

static USER_TALLY: Mutex<Tally> = Mutex::new(Tally {
    passed: 0,
    failed: 0,
    skipped: 0,
});

/// The tally the user-level test suite reported (and forgets it).
pub fn take_user_tally() -> Tally {
    core::mem::take(&mut *USER_TALLY.lock())
}

/// Handles one system call; results go in RAX.
pub fn handle(frame: &mut TrapFrame) {
    frame.rax = match frame.rdx as i64 {
        DEBUG_PUT_CHAR => {
            hal::console::print_bytes(&[frame.rdi as u8]);
            0
        }
        DEBUG_PUT_STRING => put_string(frame.rdi, frame.rsi),
        DEBUG_THREAD_EXIT => hal::user::exit_to_kernel(UserExit::Exited(frame.rdi)),
        DEBUG_TEST_REPORT => {
            let mut tally = USER_TALLY.lock();
            tally.passed += frame.rdi as u32;
            tally.failed += frame.rsi as u32;
            0
        }
        DEBUG_TICKS => hal::percpu::current()
            .ticks
            .load(core::sync::atomic::Ordering::Relaxed),
        DEBUG_HALT => hal::qemu::exit(keel_abi::exit::HALTED),
        _ => ERROR_UNKNOWN_SYSCALL,
    };
}

fn put_string(address: u64, length: u64) -> u64 {
    if length > DEBUG_PUT_STRING_MAX {
        return ERROR_BAD_ADDRESS;
    }
    let mut buffer = [0u8; DEBUG_PUT_STRING_MAX as usize];
    let bytes = &mut buffer[..length as usize];
    match hal::user::copy_from_user(address, bytes) {
        Ok(()) => {
            hal::console::print_bytes(bytes);
            length
        }
        Err(_) => ERROR_BAD_ADDRESS,
    }
}
