//! The root task of the test image: user-level tests of the system-call path. Each
//! prints one `test NAME ... ok|FAILED` line; the counts go to the kernel, which prints
//! the summary.
#![no_std]
#![no_main]

use keel_abi::syscall;
use keel_rt::println;

keel_sys::entry_point!(main);

/// Exit value the kernel expects from this suite when it ran to the end.
const DONE: u64 = 0x600d;

struct Suite {
    passed: u32,
    failed: u32,
}

impl Suite {
    fn run(&mut self, name: &str, test: impl FnOnce() -> Result<(), &'static str>) {
        match test() {
            Ok(()) => {
                self.passed += 1;
                println!("test user_{name} ... ok");
            }
            Err(why) => {
                self.failed += 1;
                println!("test user_{name} ... FAILED: {why}");
            }
        }
    }
}

fn main(cpus: u64) -> u64 {
    let mut suite = Suite {
        passed: 0,
        failed: 0,
    };
    suite.run("argument_reaches_main", || {
        if cpus >= 1 {
            Ok(())
        } else {
            Err("no CPU count in RDI")
        }
    });
    suite.run("put_string_returns_length", || {
        let text = b"(user: hello from ring 3)\n";
        if keel_sys::debug_put_string(text) == text.len() as u64 {
            Ok(())
        } else {
            Err("wrong count")
        }
    });
    suite.run("put_string_refuses_kernel_address", || {
        let r = keel_sys::debug_put_raw(0xffff_ffff_8020_0000, 16);
        if r == syscall::ERROR_BAD_ADDRESS {
            Ok(())
        } else {
            Err("kernel memory was readable")
        }
    });
    suite.run("put_string_refuses_unmapped_address", || {
        let r = keel_sys::debug_put_raw(0x1000, 16);
        if r == syscall::ERROR_BAD_ADDRESS {
            Ok(())
        } else {
            Err("unmapped memory was readable")
        }
    });
    suite.run("put_string_refuses_non_canonical_and_huge", || {
        if keel_sys::debug_put_raw(0x0000_7fff_ffff_fff0, 64) != syscall::ERROR_BAD_ADDRESS {
            return Err("range crossing the top of user space accepted");
        }
        if keel_sys::debug_put_raw(0x40_0000, u64::MAX) != syscall::ERROR_BAD_ADDRESS {
            return Err("huge length accepted");
        }
        Ok(())
    });
    suite.run("registers_survive_syscall", registers_survive);
    suite.run("timer_interrupts_reach_user_mode", || {
        let start = keel_sys::debug_ticks();
        let begin = keel_sys::rdtsc();
        while keel_sys::debug_ticks() < start + 3 {
            core::hint::spin_loop();
            if keel_sys::rdtsc() - begin > 20_000_000_000 {
                return Err("no timer ticks while running in ring 3");
            }
        }
        Ok(())
    });
    suite.run("stack_is_usable", || {
        let mut buffer = [0u8; 32 * 1024];
        for (i, b) in buffer.iter_mut().enumerate() {
            *b = i as u8;
        }
        let sum: u64 = core::hint::black_box(&buffer)
            .iter()
            .map(|&b| b as u64)
            .sum();
        if sum == (0..32 * 1024u64).map(|i| i % 256).sum() {
            Ok(())
        } else {
            Err("stack memory corrupt")
        }
    });
    keel_sys::debug_test_report(suite.passed, suite.failed);
    DONE
}

/// Callee-saved and argument registers hold their values across a system call.
fn registers_survive() -> Result<(), &'static str> {
    if keel_sys::syscall_with_marked_registers() == keel_sys::MARKS {
        Ok(())
    } else {
        Err("a register changed across SYSCALL")
    }
}
