//! Bookkeeping for on-target tests: outcomes and the pass/fail tally.

/// What one test concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// An assertion failed; the text says which.
    Failed(alloc_free::Message),
    /// The test could not run here (missing CPU feature, no KVM, ...); the reason.
    Skipped(&'static str),
}

/// Pass/fail counts of a suite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed.
    pub failed: u32,
    /// Tests that were skipped.
    pub skipped: u32,
}

impl Tally {
    /// Adds one outcome.
    pub fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Skipped(_) => self.skipped += 1,
        }
    }

    /// Adds another tally (e.g. the user-level suite's).
    pub fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    /// Whether the suite as a whole succeeded: no failures and at least one pass.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

/// A fixed-capacity failure message, so tests can fail without a heap.
pub mod alloc_free {
    use core::fmt;

    /// Up to 120 bytes of text.
    #[derive(Clone, PartialEq, Eq)]
    pub struct Message {
        bytes: [u8; 120],
        len: usize,
    }

    impl Message {
        /// Formats `args` into a message, truncating what does not fit.
        pub fn new(args: fmt::Arguments<'_>) -> Self {
            let mut m = Message {
                bytes: [0; 120],
                len: 0,
            };
            let _ = fmt::write(&mut m, args);
            m
        }

        /// The text.
        pub fn as_str(&self) -> &str {
            match core::str::from_utf8(&self.bytes[..self.len]) {
                Ok(s) => s,
                Err(e) => core::str::from_utf8(&self.bytes[..e.valid_up_to()]).unwrap_or(""),
            }
        }
    }

    impl fmt::Write for Message {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = self.bytes.len() - self.len;
            let n = s.len().min(room);
            self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }

    impl fmt::Debug for Message {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl fmt::Display for Message {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.as_str())
        }
    }
}

/// Fails the current test (returns `Outcome::Failed`) unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return $crate::testing::Outcome::Failed($crate::testing::alloc_free::Message::new(format_args!(
                "{}:{}: check failed: {}",
                file!(),
                line!(),
                stringify!($cond)
            )));
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return $crate::testing::Outcome::Failed($crate::testing::alloc_free::Message::new(format_args!(
                "{}:{}: {}",
                file!(),
                line!(),
                format_args!($($arg)+)
            )));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing() -> Outcome {
        check!(1 + 1 == 3, "arithmetic is {}", "hard");
        Outcome::Passed
    }

    #[test]
    fn check_macro_reports() {
        match failing() {
            Outcome::Failed(m) => assert!(m.as_str().contains("arithmetic is hard")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tally() {
        let mut t = Tally::default();
        t.record(&Outcome::Passed);
        t.record(&Outcome::Skipped("x"));
        assert!(t.success());
        t.record(&Outcome::Failed(alloc_free::Message::new(format_args!(
            "x"
        ))));
        assert!(!t.success());
        assert!(!Tally::default().success());
    }
}
