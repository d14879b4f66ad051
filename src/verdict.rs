//! What a boot's serial output and QEMU exit mean: the runner's verdict and exit status.
//!
//! Serial lines are read with `keel_abi::harness::parse_line` and QEMU statuses with
//! `keel_abi::exit::classify`, so the kernel's and the runner's views cannot drift.

use std::fmt;

use keel_abi::exit::{Outcome, classify};
use keel_abi::harness::{PANIC_MARKER, POWER_OFF_LINE, RESTART_LINE, TestLine, parse_line};

/// Runner exit status: success.
pub const EXIT_OK: u8 = 0;
/// Runner exit status: on-target tests failed (a FAILED line, failures in the summary, no
/// summary, no test passed, or the kernel reported failed tests).
pub const EXIT_TESTS_FAILED: u8 = 1;
/// Runner exit status: bad usage (clap's own status).
pub const EXIT_USAGE: u8 = 2;
/// Runner exit status: a `KERNEL PANIC` line, or the panic exit status.
pub const EXIT_KERNEL_PANIC: u8 = 3;
/// Runner exit status: timeout (QEMU was killed).
pub const EXIT_TIMEOUT: u8 = 4;
/// Runner exit status: QEMU ended without success (status 0 = triple fault or shutdown,
/// an unknown status, a signal, or it exited before `--until`'s pattern appeared).
pub const EXIT_QEMU_FAILED: u8 = 5;
/// Runner exit status: host problem (missing tools, ISO build, QEMU could not start).
pub const EXIT_HOST_ERROR: u8 = 6;
/// Runner exit status: interrupted (SIGINT/SIGTERM/SIGHUP).
pub const EXIT_INTERRUPTED: u8 = 130;

/// What the runner checks in the serial output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Run until QEMU exits; its status decides.
    Run,
    /// Succeed as soon as the output contains the pattern.
    Until(String),
    /// The on-target test protocol (`keel_abi::harness`) and a success status.
    CheckTests,
}

/// What the serial output showed so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Names of tests that printed `ok`.
    pub ok: Vec<String>,
    /// Names of tests that printed `FAILED`.
    pub failed: Vec<String>,
    /// Skipped tests with their reasons.
    pub skipped: Vec<(String, String)>,
    /// The last summary line, (passed, failed).
    pub summary: Option<(u32, u32)>,
    /// The first line holding the panic marker.
    pub panic: Option<String>,
    /// The image asked for a power off or a restart on the last non-empty line
    /// ([`POWER_OFF_LINE`], [`RESTART_LINE`]).
    pub power: Option<PowerRequest>,
    /// Each test result line (ok, FAILED, skipped) with the time from the line before
    /// it, as [`crate::run::supervise`] saw them arrive: what a slow or hung run spent
    /// its time on.
    pub timings: Vec<(String, std::time::Duration)>,
    /// Time from the last test result line to the end of the run.
    pub since_last_result: std::time::Duration,
}

/// The test a result line (ok, FAILED or skipped) is about.
pub fn result_name(line: &str) -> Option<String> {
    match parse_line(line)? {
        TestLine::Ok(name) | TestLine::Failed(name) | TestLine::Skipped(name, _) => {
            Some(name.to_string())
        }
        TestLine::Summary { .. } => None,
    }
}

/// A power change the image announced on serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerRequest {
    /// [`POWER_OFF_LINE`]: ACPI S5.
    Off,
    /// [`RESTART_LINE`]: a reset, which ends QEMU under `-no-reboot`.
    Restart,
}

impl Observed {
    /// The `n` slowest test results, slowest first, as `name (12.3 s)`.
    pub fn slowest(&self, n: usize) -> Vec<String> {
        let mut t: Vec<_> = self.timings.iter().collect();
        t.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        t.iter()
            .take(n)
            .map(|(name, d)| format!("{name} ({:.1} s)", d.as_secs_f64()))
            .collect()
    }

    /// Takes one complete serial line into account.
    pub fn line(&mut self, line: &str) {
        let trimmed = line.trim_end();
        if !trimmed.is_empty() {
            self.power = match trimmed {
                POWER_OFF_LINE => Some(PowerRequest::Off),
                RESTART_LINE => Some(PowerRequest::Restart),
                _ => None,
            };
        }
        if line.contains(PANIC_MARKER) && self.panic.is_none() {
            self.panic = Some(line.trim_end().to_string());
        }
        match parse_line(line) {
            Some(TestLine::Ok(name)) => self.ok.push(name.to_string()),
            Some(TestLine::Failed(name)) => self.failed.push(name.to_string()),
            Some(TestLine::Skipped(name, why)) => {
                self.skipped.push((name.to_string(), why.to_string()))
            }
            Some(TestLine::Summary { passed, failed }) => self.summary = Some((passed, failed)),
            None => {}
        }
    }
}

/// How the boot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited by itself with this status (`None`: killed by a signal).
    Exited(Option<i32>),
    /// The `--until` pattern appeared; the runner stopped QEMU.
    PatternSeen,
    /// The timeout passed; the runner killed QEMU.
    TimedOut(u64),
    /// A panic line appeared and QEMU did not exit by itself soon after; the runner killed it.
    PanicStopped,
    /// The runner was interrupted and stopped QEMU.
    Interrupted,
}

/// The runner's judgement of a boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The runner's exit status (`EXIT_*`).
    pub code: u8,
    /// One line saying why.
    pub message: String,
}

impl Verdict {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Verdict {
            code,
            message: message.into(),
        }
    }

    /// Whether the boot succeeded.
    pub fn passed(&self) -> bool {
        self.code == EXIT_OK
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.passed() { "PASSED" } else { "FAILED" };
        write!(f, "{word}: {}", self.message)
    }
}

/// Describes a QEMU exit status.
pub fn describe_status(status: Option<i32>) -> String {
    match status {
        None => "QEMU was killed by a signal".to_string(),
        Some(s) => match classify(s) {
            Outcome::Success => format!("QEMU exit status {s} (success)"),
            Outcome::TestsFailed => format!("QEMU exit status {s} (tests failed)"),
            Outcome::KernelPanic => format!("QEMU exit status {s} (kernel panic)"),
            Outcome::Halted => format!("QEMU exit status {s} (halted by a user program)"),
            Outcome::TripleFaultOrShutdown => {
                format!("QEMU exit status {s} (triple fault or shutdown)")
            }
            Outcome::Other(_) => format!("QEMU exit status {s} (not a Keel status: QEMU failed?)"),
        },
    }
}

/// The verdict of a QEMU status alone.
fn by_status(status: Option<i32>) -> Verdict {
    let what = describe_status(status);
    match status.map(classify) {
        Some(Outcome::Success) => Verdict::new(EXIT_OK, what),
        Some(Outcome::TestsFailed) => Verdict::new(EXIT_TESTS_FAILED, what),
        Some(Outcome::KernelPanic) => Verdict::new(EXIT_KERNEL_PANIC, what),
        _ => Verdict::new(EXIT_QEMU_FAILED, what),
    }
}

/// Judges a boot.
pub fn judge(mode: &Mode, seen: &Observed, ending: Ending) -> Verdict {
    if ending == Ending::Interrupted {
        return Verdict::new(EXIT_INTERRUPTED, "interrupted; QEMU stopped");
    }
    if let Some(line) = &seen.panic {
        return Verdict::new(EXIT_KERNEL_PANIC, format!("kernel panic: {line}"));
    }
    let timed_out =
        |secs: u64| Verdict::new(EXIT_TIMEOUT, format!("timeout after {secs} s; QEMU killed"));
    match mode {
        Mode::Until(pattern) => match ending {
            Ending::PatternSeen => {
                Verdict::new(EXIT_OK, format!("serial output contains `{pattern}`"))
            }
            Ending::TimedOut(secs) => Verdict::new(
                EXIT_TIMEOUT,
                format!("no `{pattern}` on serial after {secs} s; QEMU killed"),
            ),
            Ending::Exited(status) => Verdict::new(
                EXIT_QEMU_FAILED,
                format!(
                    "{} before `{pattern}` appeared on serial",
                    describe_status(status)
                ),
            ),
            Ending::PanicStopped | Ending::Interrupted => {
                Verdict::new(EXIT_QEMU_FAILED, "QEMU stopped")
            }
        },
        Mode::Run => match ending {
            Ending::Exited(Some(0)) if seen.power.is_some() => {
                let (line, what) = match seen.power {
                    Some(PowerRequest::Restart) => (RESTART_LINE, "restarted"),
                    _ => (POWER_OFF_LINE, "powered off"),
                };
                Verdict::new(
                    EXIT_OK,
                    format!("{what}: `{line}`, then QEMU exit status 0"),
                )
            }
            Ending::Exited(status) => by_status(status),
            Ending::TimedOut(secs) => timed_out(secs),
            _ => Verdict::new(EXIT_QEMU_FAILED, "QEMU stopped"),
        },
        Mode::CheckTests => {
            let counts = |(passed, failed): (u32, u32)| {
                format!(
                    "{passed} passed, {failed} failed, {} skipped",
                    seen.skipped.len()
                )
            };
            if !seen.failed.is_empty() {
                return Verdict::new(
                    EXIT_TESTS_FAILED,
                    format!("failed tests: {}", seen.failed.join(", ")),
                );
            }
            if let Some((passed, failed)) = seen.summary.filter(|&(_, failed)| failed > 0) {
                return Verdict::new(
                    EXIT_TESTS_FAILED,
                    format!("summary says {}", counts((passed, failed))),
                );
            }
            let status = match ending {
                Ending::Exited(status) => status,
                Ending::TimedOut(secs) => return timed_out(secs),
                _ => return Verdict::new(EXIT_QEMU_FAILED, "QEMU stopped"),
            };
            let Some(summary) = seen.summary else {
                return Verdict::new(
                    EXIT_TESTS_FAILED,
                    format!(
                        "no `N passed, N failed` summary line; {}",
                        describe_status(status)
                    ),
                );
            };
            if summary.0 == 0 {
                return Verdict::new(EXIT_TESTS_FAILED, "summary says 0 tests passed");
            }
            let by_status = by_status(status);
            if by_status.passed() {
                Verdict::new(
                    EXIT_OK,
                    format!("{}; {}", counts(summary), by_status.message),
                )
            } else {
                Verdict::new(
                    by_status.code,
                    format!("{}, but {}", counts(summary), by_status.message),
                )
            }
        }
    }
}

/// Finds `needle` in `haystack` (bytes).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_abi::exit::{HALTED, KERNEL_PANIC, SUCCESS, TESTS_FAILED, qemu_status};

    fn seen(text: &str) -> Observed {
        let mut seen = Observed::default();
        text.lines().for_each(|l| seen.line(l));
        seen
    }

    #[test]
    fn result_lines_name_their_test_and_the_slowest_come_first() {
        assert_eq!(result_name("test a_b ... ok").as_deref(), Some("a_b"));
        assert_eq!(result_name("test c ... FAILED: why").as_deref(), Some("c"));
        assert_eq!(
            result_name("test d ... skipped (no SMAP)").as_deref(),
            Some("d")
        );
        assert_eq!(result_name("3 passed, 0 failed"), None);
        assert_eq!(result_name("[0] INFO boot"), None);
        let mut seen = Observed::default();
        for (name, ms) in [("a", 20), ("b", 3000), ("c", 450), ("d", 1)] {
            seen.timings
                .push((name.to_string(), std::time::Duration::from_millis(ms)));
        }
        assert_eq!(seen.slowest(2), ["b (3.0 s)", "c (0.5 s)"]);
    }

    const GOOD: &str =
        "keel: boot\r\ntest a ... ok\r\ntest b ... skipped (no FSGSBASE)\r\n1 passed, 0 failed\r\n";
    const OK: Ending = Ending::Exited(Some(qemu_status(SUCCESS)));

    #[test]
    fn good_test_run_passes() {
        let s = seen(GOOD);
        assert_eq!(s.ok, ["a"]);
        assert_eq!(s.skipped, [("b".to_string(), "no FSGSBASE".to_string())]);
        let v = judge(&Mode::CheckTests, &s, OK);
        assert_eq!(v.code, EXIT_OK, "{v}");
        assert_eq!(
            v.to_string(),
            "PASSED: 1 passed, 0 failed, 1 skipped; QEMU exit status 33 (success)"
        );
    }

    #[test]
    fn test_failures() {
        let failed = seen("test a ... ok\ntest b ... FAILED: x\n1 passed, 1 failed\n");
        let v = judge(
            &Mode::CheckTests,
            &failed,
            Ending::Exited(Some(qemu_status(TESTS_FAILED))),
        );
        assert_eq!(
            (v.code, v.message.as_str()),
            (EXIT_TESTS_FAILED, "failed tests: b")
        );
        // A FAILED line counts even when the summary and the status claim success.
        let lying = seen("test b ... FAILED\n1 passed, 0 failed\n");
        assert_eq!(judge(&Mode::CheckTests, &lying, OK).code, EXIT_TESTS_FAILED);
        let summary_only = seen("3 passed, 2 failed\n");
        assert_eq!(
            judge(&Mode::CheckTests, &summary_only, OK).code,
            EXIT_TESTS_FAILED
        );
        // Failures are reported even when the run then hung.
        assert_eq!(
            judge(&Mode::CheckTests, &failed, Ending::TimedOut(5)).code,
            EXIT_TESTS_FAILED
        );
    }

    #[test]
    fn missing_or_empty_summary_fails() {
        let v = judge(&Mode::CheckTests, &seen("test a ... ok\n"), OK);
        assert_eq!(v.code, EXIT_TESTS_FAILED);
        assert!(
            v.message
                .starts_with("no `N passed, N failed` summary line"),
            "{v}"
        );
        let v = judge(&Mode::CheckTests, &seen("0 passed, 0 failed\n"), OK);
        assert_eq!(
            (v.code, v.message.as_str()),
            (EXIT_TESTS_FAILED, "summary says 0 tests passed")
        );
    }

    #[test]
    fn bad_status_fails_even_with_good_output() {
        let s = seen(GOOD);
        for (status, code) in [
            (Some(0), EXIT_QEMU_FAILED),
            (Some(1), EXIT_QEMU_FAILED),
            (Some(qemu_status(HALTED)), EXIT_QEMU_FAILED),
            (Some(qemu_status(TESTS_FAILED)), EXIT_TESTS_FAILED),
            (Some(qemu_status(KERNEL_PANIC)), EXIT_KERNEL_PANIC),
            (None, EXIT_QEMU_FAILED),
        ] {
            let v = judge(&Mode::CheckTests, &s, Ending::Exited(status));
            assert_eq!(v.code, code, "{status:?}: {v}");
        }
        let v = judge(&Mode::CheckTests, &s, Ending::Exited(Some(0)));
        assert_eq!(
            v.message,
            "1 passed, 0 failed, 1 skipped, but QEMU exit status 0 (triple fault or shutdown)"
        );
    }

    #[test]
    fn panic_wins() {
        let s = seen(&format!("{GOOD}KERNEL PANIC at kern/src/lib.rs:3: boom\n"));
        for mode in [Mode::Run, Mode::CheckTests, Mode::Until("x".into())] {
            let v = judge(&mode, &s, OK);
            assert_eq!(v.code, EXIT_KERNEL_PANIC, "{mode:?}");
            assert_eq!(
                v.message,
                "kernel panic: KERNEL PANIC at kern/src/lib.rs:3: boom"
            );
        }
    }

    #[test]
    fn timeouts_and_interrupts() {
        let s = seen("test a ... ok\n");
        assert_eq!(
            judge(&Mode::CheckTests, &s, Ending::TimedOut(150)).code,
            EXIT_TIMEOUT
        );
        assert_eq!(
            judge(&Mode::Run, &s, Ending::TimedOut(1)).code,
            EXIT_TIMEOUT
        );
        let v = judge(
            &Mode::Until("keel: ready".into()),
            &s,
            Ending::TimedOut(120),
        );
        assert_eq!(
            v.to_string(),
            "FAILED: no `keel: ready` on serial after 120 s; QEMU killed"
        );
        assert_eq!(
            judge(&Mode::CheckTests, &s, Ending::Interrupted).code,
            EXIT_INTERRUPTED
        );
    }

    #[test]
    fn until_mode() {
        let s = seen("keel: ready\n");
        let until = Mode::Until("keel: ready".into());
        assert_eq!(judge(&until, &s, Ending::PatternSeen).code, EXIT_OK);
        // QEMU exiting first is a failure, whatever its status.
        let v = judge(&until, &Observed::default(), OK);
        assert_eq!(v.code, EXIT_QEMU_FAILED);
        assert_eq!(
            v.message,
            "QEMU exit status 33 (success) before `keel: ready` appeared on serial"
        );
    }

    #[test]
    fn run_mode_maps_status() {
        let s = Observed::default();
        assert_eq!(judge(&Mode::Run, &s, OK).code, EXIT_OK);
        assert_eq!(
            judge(&Mode::Run, &s, Ending::Exited(Some(0))).code,
            EXIT_QEMU_FAILED
        );
        assert_eq!(
            judge(
                &Mode::Run,
                &s,
                Ending::Exited(Some(qemu_status(TESTS_FAILED)))
            )
            .code,
            EXIT_TESTS_FAILED
        );
    }

    #[test]
    fn power_off_and_restart_lines_make_status_zero_a_success() {
        let off = seen("keel> poweroff\r\nkeel: powering off\r\n");
        assert_eq!(off.power, Some(PowerRequest::Off));
        let v = judge(&Mode::Run, &off, Ending::Exited(Some(0)));
        assert_eq!(v.code, EXIT_OK, "{v}");
        assert!(v.message.contains("powered off"), "{v}");
        let restart = seen("keel: restarting\n\n");
        let v = judge(&Mode::Run, &restart, Ending::Exited(Some(0)));
        assert_eq!(v.code, EXIT_OK, "{v}");
        assert!(v.message.contains("restarted"), "{v}");
        // Only right after the line, only in plain runs, only with status 0.
        let later = seen("keel: powering off\nthe machine is still running\n");
        assert_eq!(later.power, None);
        let v = judge(&Mode::Run, &later, Ending::Exited(Some(0)));
        assert_eq!(v.code, EXIT_QEMU_FAILED, "{v}");
        let v = judge(&Mode::Run, &off, Ending::Exited(Some(1)));
        assert_eq!(v.code, EXIT_QEMU_FAILED, "{v}");
        let v = judge(&Mode::Until("x".into()), &off, Ending::Exited(Some(0)));
        assert_eq!(v.code, EXIT_QEMU_FAILED, "{v}");
        let v = judge(&Mode::CheckTests, &off, Ending::Exited(Some(0)));
        assert_ne!(v.code, EXIT_OK, "{v}");
        let v = judge(&Mode::Run, &off, Ending::TimedOut(5));
        assert_eq!(v.code, EXIT_TIMEOUT, "{v}");
    }

    #[test]
    fn byte_search() {
        assert!(contains(b"abc keel: ready\r\n", b"keel: ready"));
        assert!(!contains(b"keel: rea", b"keel: ready"));
    }
}
