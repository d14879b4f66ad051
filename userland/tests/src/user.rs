//! The system-call path tests from before the object model (`user_*`): argument passing,
//! Keel's debug string call and its address checks, register preservation, timer
//! interrupts in ring 3, and the stack.

use keel_abi::syscall;

use crate::harness::{Suite, TestResult};
use crate::{ensure, fail};

/// Runs the `user_*` tests; `argument` is what the kernel passed in RDI.
pub fn run(suite: &mut Suite, argument: u64) {
    suite.run("user_argument_reaches_main", || {
        ensure!(argument != 0, "RDI was 0");
        ensure!(
            argument == keel_sys::thread::boot_argument(),
            "main got {argument:#x}, _start saw {:#x}",
            keel_sys::thread::boot_argument()
        );
        Ok(())
    });
    suite.run("user_put_string_returns_length", || {
        let text = b"(user: hello from ring 3)\n";
        let n = keel_sys::debug_put_string(text);
        ensure!(n == text.len() as u64, "returned {n}");
        Ok(())
    });
    suite.run("user_put_string_refuses_kernel_address", || {
        let r = keel_sys::debug_put_raw(0xffff_ffff_8020_0000, 16);
        ensure!(
            r == syscall::ERROR_BAD_ADDRESS,
            "kernel memory was readable ({r:#x})"
        );
        Ok(())
    });
    suite.run("user_put_string_refuses_unmapped_address", || {
        let r = keel_sys::debug_put_raw(0x1000, 16);
        ensure!(
            r == syscall::ERROR_BAD_ADDRESS,
            "unmapped memory was readable ({r:#x})"
        );
        Ok(())
    });
    suite.run("user_put_string_refuses_non_canonical_and_huge", || {
        if keel_sys::debug_put_raw(0x0000_7fff_ffff_fff0, 64) != syscall::ERROR_BAD_ADDRESS {
            fail!("range crossing the top of user space accepted");
        }
        if keel_sys::debug_put_raw(0x40_0000, u64::MAX) != syscall::ERROR_BAD_ADDRESS {
            fail!("huge length accepted");
        }
        Ok(())
    });
    suite.run("user_registers_survive_syscall", registers_survive);
    suite.run("user_timer_interrupts_reach_user_mode", || {
        let start = keel_sys::debug_ticks();
        let begin = keel_sys::rdtsc();
        while keel_sys::debug_ticks() < start + 3 {
            core::hint::spin_loop();
            if keel_sys::rdtsc() - begin > 20_000_000_000 {
                fail!("no timer ticks while running in ring 3");
            }
        }
        Ok(())
    });
    suite.run("user_stack_is_usable", || {
        let mut buffer = [0u8; 32 * 1024];
        for (i, b) in buffer.iter_mut().enumerate() {
            *b = i as u8;
        }
        let sum: u64 = core::hint::black_box(&buffer)
            .iter()
            .map(|&b| b as u64)
            .sum();
        ensure!(
            sum == (0..32 * 1024u64).map(|i| i % 256).sum(),
            "stack memory corrupt"
        );
        Ok(())
    });
}

/// Callee-saved and message registers hold their values across a system call (Yield).
fn registers_survive() -> TestResult {
    let got = keel_sys::syscall_with_marked_registers();
    ensure!(
        got == keel_sys::MARKS,
        "registers changed across SYSCALL: {got:x?}"
    );
    Ok(())
}
