//! In-kernel tests: registered with [`kernel_test!`] into the `.keel_tests` linker
//! section (no nightly test framework) and run by the test image.
//!
//! Each test prints exactly one line in the protocol of `keel_abi::harness`:
//! `test NAME ... ok`, `test NAME ... FAILED: why` or `test NAME ... skipped (why)`.

use keel_kern::testing::{Outcome, Tally};

/// One registered test.
#[repr(C)]
pub struct TestCase {
    /// Its name, as printed.
    pub name: &'static str,
    /// The test.
    pub run: fn() -> Outcome,
}

/// Registers an in-kernel test: `hal::kernel_test!(name, function);` where
/// `fn function() -> keel_kern::testing::Outcome`.
#[macro_export]
macro_rules! kernel_test {
    ($name:ident, $function:path) => {
        const _: () = {
            #[allow(unsafe_code)]
            // SAFETY: the section holds only `TestCase` records; the linker script keeps
            // it and `hal::testing::all` reads it as an array of them.
            #[unsafe(link_section = ".keel_tests")]
            #[used]
            static TEST: $crate::testing::TestCase = $crate::testing::TestCase {
                name: stringify!($name),
                run: $function,
            };
        };
    };
}

#[allow(improper_ctypes)]
unsafe extern "C" {
    static __keel_tests_start: TestCase;
    static __keel_tests_end: TestCase;
}

/// Every registered test, in link order.
pub fn all() -> &'static [TestCase] {
    // SAFETY: the linker places only TestCase records (emitted by kernel_test!, all of
    // the same size and alignment) between these symbols.
    unsafe {
        let start = &raw const __keel_tests_start;
        let end = &raw const __keel_tests_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// Prints one result line in the harness protocol.
pub fn report(name: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Passed => crate::println!("test {name} ... ok"),
        Outcome::Failed(why) => crate::println!("test {name} ... FAILED: {why}"),
        Outcome::Skipped(why) => crate::println!("test {name} ... skipped ({why})"),
    }
}

/// Runs every registered test whose name passes `filter`, printing one line each.
pub fn run_all(filter: impl Fn(&str) -> bool) -> Tally {
    let mut tally = Tally::default();
    for test in all().iter().filter(|t| filter(t.name)) {
        let outcome = (test.run)();
        report(test.name, &outcome);
        tally.record(&outcome);
    }
    tally
}
