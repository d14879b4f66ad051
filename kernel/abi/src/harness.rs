//! The serial-line protocol between the on-target test image and the host harness.
//!
//! Every test prints exactly one result line, `test NAME ... ok`, `test NAME ... FAILED`
//! or `test NAME ... skipped (REASON)`, and the image ends with one summary line
//! `N passed, N failed` before it exits QEMU through isa-debug-exit. The kernel prints
//! [`PANIC_MARKER`] at the start of its panic message. The default image prints
//! [`READY_LINE`] once the root task has run, and [`POWER_OFF_LINE`] or
//! [`RESTART_LINE`] when it is asked to turn the machine off or restart it.

/// Start of every test result line.
pub const TEST_PREFIX: &str = "test ";
/// Separator between a test's name and its result.
pub const RESULT_SEPARATOR: &str = " ... ";
/// Printed first by the kernel panic handler.
pub const PANIC_MARKER: &str = "KERNEL PANIC";
/// Printed by the default image when the system is up.
pub const READY_LINE: &str = "keel: ready";
/// Printed by the default image's power service just before it powers the machine off
/// (ACPI S5). QEMU then exits with status 0, which the runner counts as success only
/// right after this line.
pub const POWER_OFF_LINE: &str = "keel: powering off";
/// Printed by the default image's power service just before it resets the machine.
/// Under `-no-reboot` QEMU then exits with status 0, which the runner counts as
/// success only right after this line.
pub const RESTART_LINE: &str = "keel: restarting";
/// Kernel command-line word that makes the kernel run its in-kernel test suite.
pub const CMDLINE_RUN_TESTS: &str = "keel.test";
/// Kernel command-line word that adds a deliberately failing in-kernel test, to prove
/// the harness can fail.
pub const CMDLINE_FAIL_TEST: &str = "keel.test_fail";

/// A parsed result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestLine<'a> {
    /// `test NAME ... ok`
    Ok(&'a str),
    /// `test NAME ... FAILED` (anything after FAILED is a reason)
    Failed(&'a str),
    /// `test NAME ... skipped (REASON)`
    Skipped(&'a str, &'a str),
    /// `N passed, N failed`
    Summary { passed: u32, failed: u32 },
}

/// Parses one serial line; `None` for lines that are not part of the protocol.
pub fn parse_line(line: &str) -> Option<TestLine<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = line.strip_prefix(TEST_PREFIX) {
        let (name, result) = rest.split_once(RESULT_SEPARATOR)?;
        if result == "ok" {
            return Some(TestLine::Ok(name));
        }
        if result.starts_with("FAILED") {
            return Some(TestLine::Failed(name));
        }
        if let Some(reason) = result.strip_prefix("skipped (") {
            return Some(TestLine::Skipped(name, reason.strip_suffix(')')?));
        }
        return None;
    }
    let (passed, rest) = line.split_once(" passed, ")?;
    let failed = rest.strip_suffix(" failed")?;
    Some(TestLine::Summary {
        passed: passed.trim().parse().ok()?,
        failed: failed.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        assert_eq!(
            parse_line("test heap ... ok\r\n"),
            Some(TestLine::Ok("heap"))
        );
        assert_eq!(
            parse_line("test a b ... FAILED: x"),
            Some(TestLine::Failed("a b"))
        );
        assert_eq!(
            parse_line("test kvm ... skipped (no KVM)"),
            Some(TestLine::Skipped("kvm", "no KVM"))
        );
        assert_eq!(
            parse_line("12 passed, 0 failed"),
            Some(TestLine::Summary {
                passed: 12,
                failed: 0
            })
        );
        assert_eq!(parse_line("keel: booting"), None);
        assert_eq!(parse_line("test x ... maybe"), None);
    }
}
