//! Boots the on-target images in QEMU across the test matrix of DESIGN.md §8, through the runner.
//!
//! Each leg runs the `keel` binary as a human would (`keel --image test --cpu qemu64 ...`)
//! and then reads the serial output itself with `keel_abi::harness::parse_line`: a leg
//! fails on a FAILED line, a `KERNEL PANIC`, a missing summary, a summary with failures or
//! with nothing passed, a timeout, or a runner exit status other than 0 (which covers a
//! bad QEMU status). A failed leg prints the runner's log and the whole serial output.
//!
//! The eight TCG legs cover every value of every axis (cpu qemu64/max, smp 1/4, BIOS/UEFI,
//! 128M/4G, pc/q35) and every combination of cpu, smp and firmware, in 8 boots instead of 32.

use std::io::Write as _;
use std::process::{Command, Stdio};

use keel::verdict::{EXIT_OK, EXIT_TESTS_FAILED};
use keel_abi::harness::{
    CMDLINE_FAIL_TEST, PANIC_MARKER, POWER_OFF_LINE, READY_LINE, RESTART_LINE, TestLine, parse_line,
};

/// Timeout of one TCG boot of the test image, in seconds (the runner kills QEMU then).
/// A leg takes about 20 s alone here and up to about 115 s with four at once on two
/// host cores (4-CPU guests); a CI machine slower still once took over 150 s. The
/// suite's own time limits (the concurrent fuzz test's about 150 s of TSC) stay below
/// this, so that a hang is reported by the test that hung.
const TCG_TIMEOUT: &str = "400";
/// Timeout of the default image's `keel: ready` leg, in seconds.
const READY_TIMEOUT: &str = "120";

/// One finished run of the runner.
struct Run {
    /// The runner's exit status.
    code: Option<i32>,
    /// Its stdout: the serial output.
    serial: String,
    /// Its stderr: progress lines, QEMU's messages and the verdict.
    log: String,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "runner exit status: {:?}\n--- runner log (stderr) ---\n{}--- serial output ---\n{}--- end ---",
            self.code, self.log, self.serial
        )
    }
}

fn runner(args: &[&str]) -> Run {
    runner_with_input(args, None)
}

/// Runs the runner with `input` (if any) on its standard input, which `--until` runs
/// forward to the serial port.
fn runner_with_input(args: &[&str], input: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the keel runner");
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .expect("cannot write the runner's stdin");
        // Dropping `stdin` closes it: QEMU sees end of input after the script.
    }
    let output = child
        .wait_with_output()
        .expect("cannot wait for the keel runner");
    Run {
        code: output.status.code(),
        serial: String::from_utf8_lossy(&output.stdout).into_owned(),
        log: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The test protocol as read from the serial output.
#[derive(Default)]
struct Protocol {
    ok: usize,
    failed: Vec<String>,
    summary: Option<(u32, u32)>,
    panic: bool,
}

fn protocol(serial: &str) -> Protocol {
    let mut p = Protocol::default();
    for line in serial.lines() {
        p.panic |= line.contains(PANIC_MARKER);
        match parse_line(line) {
            Some(TestLine::Ok(_)) => p.ok += 1,
            Some(TestLine::Failed(name)) => p.failed.push(name.to_string()),
            Some(TestLine::Summary { passed, failed }) => p.summary = Some((passed, failed)),
            Some(TestLine::Skipped(..)) | None => {}
        }
    }
    p
}

/// Everything wrong with a run of the test image; empty when it passed.
fn problems(run: &Run) -> Vec<String> {
    let p = protocol(&run.serial);
    let mut problems = Vec::new();
    if p.panic {
        problems.push(format!("`{PANIC_MARKER}` on serial"));
    }
    if !p.failed.is_empty() {
        problems.push(format!("FAILED tests: {}", p.failed.join(", ")));
    }
    match p.summary {
        None => problems.push("no `N passed, N failed` summary line".to_string()),
        Some((_, failed)) if failed > 0 => problems.push(format!("summary: {failed} failed")),
        Some((0, _)) => problems.push("summary: 0 passed".to_string()),
        Some(_) => {}
    }
    if run.code != Some(i32::from(EXIT_OK)) {
        let verdict = run
            .log
            .lines()
            .rev()
            .find(|l| l.starts_with("keel: "))
            .unwrap_or("(no verdict line)");
        problems.push(format!("runner exit status {:?}: {verdict}", run.code));
    }
    problems
}

/// Boots the test image under TCG with one setting of each axis and checks it.
fn test_leg(cpu: &str, smp: u32, uefi: bool, mem: &str, machine: &str) {
    let smp = smp.to_string();
    let mut args = vec![
        "--image", "test", "--accel", "tcg", "--cpu", cpu, "--smp", &smp, "--mem", mem,
    ];
    args.extend(["--machine", machine, "--timeout", TCG_TIMEOUT]);
    if uefi {
        args.push("--uefi");
    }
    let run = runner(&args);
    let problems = problems(&run);
    assert!(
        problems.is_empty(),
        "keel {}:\n{}\n{}",
        args.join(" "),
        problems.join("\n"),
        run.report()
    );
}

#[test]
fn tcg_qemu64_smp1_bios_128m_pc() {
    test_leg("qemu64", 1, false, "128M", "pc");
}

#[test]
fn tcg_qemu64_smp1_uefi_4g_q35() {
    test_leg("qemu64", 1, true, "4G", "q35");
}

#[test]
fn tcg_qemu64_smp4_bios_4g_q35() {
    test_leg("qemu64", 4, false, "4G", "q35");
}

#[test]
fn tcg_qemu64_smp4_uefi_128m_pc() {
    test_leg("qemu64", 4, true, "128M", "pc");
}

#[test]
fn tcg_max_smp1_bios_4g_pc() {
    test_leg("max", 1, false, "4G", "pc");
}

#[test]
fn tcg_max_smp1_uefi_128m_q35() {
    test_leg("max", 1, true, "128M", "q35");
}

#[test]
fn tcg_max_smp4_bios_128m_q35() {
    test_leg("max", 4, false, "128M", "q35");
}

#[test]
fn tcg_max_smp4_uefi_4g_pc() {
    test_leg("max", 4, true, "4G", "pc");
}

/// `keel.check_invariants=4`: the kernel runs its invariant checker
/// (`keel_kern::invariants`) after every 4th system call of the whole test image and
/// panics on a broken invariant; the run must pass as any other leg. One CPU: a check
/// holds the big kernel lock for milliseconds, and the lock is not fair, so with two
/// CPUs the cross-CPU tests' timeouts expire.
#[test]
fn tcg_max_smp1_bios_256m_q35_check_invariants() {
    let args = [
        "--image",
        "test",
        "--smp",
        "1",
        "--cmdline",
        "keel.check_invariants=4",
        "--timeout",
        "300",
    ];
    let run = runner(&args);
    let problems = problems(&run);
    assert!(
        problems.is_empty(),
        "keel {}:\n{}\n{}",
        args.join(" "),
        problems.join("\n"),
        run.report()
    );
    assert!(
        run.serial
            .contains("checking the kernel's invariants every 4 system call(s)"),
        "the checker was not switched on\n{}",
        run.report()
    );
}

/// `keel.test_fail` adds a failing in-kernel test: the run must be judged FAILED, both by
/// this harness and by the runner, which proves a broken kernel cannot pass.
#[test]
fn tcg_max_smp2_bios_256m_q35_test_fail() {
    let args = [
        "--image",
        "test",
        "--cmdline",
        CMDLINE_FAIL_TEST,
        "--timeout",
        TCG_TIMEOUT,
    ];
    let run = runner(&args);
    let p = protocol(&run.serial);
    assert!(
        !p.failed.is_empty(),
        "no FAILED line with {CMDLINE_FAIL_TEST}\n{}",
        run.report()
    );
    assert!(
        !problems(&run).is_empty(),
        "the harness did not fail the run\n{}",
        run.report()
    );
    assert!(
        !p.panic,
        "a failing test must not panic the kernel\n{}",
        run.report()
    );
    assert_eq!(
        run.code,
        Some(i32::from(EXIT_TESTS_FAILED)),
        "runner status\n{}",
        run.report()
    );
    assert!(
        run.log
            .lines()
            .any(|l| l.starts_with("keel: FAILED: failed tests: ")),
        "{}",
        run.report()
    );
}

/// Hardware KVM with the host CPU, only where /dev/kvm is real (not kvm_pvm).
#[test]
fn kvm_host_smp2_bios_256m_q35() {
    if let Err(why) = keel::host::hardware_kvm() {
        // Straight to stderr, past libtest's capture, so the reason shows in `cargo test`.
        let _ = writeln!(
            std::io::stderr(),
            "keel: KVM leg kvm_host_smp2_bios_256m_q35 skipped ({why})"
        );
        return;
    }
    let args = [
        "--image",
        "test",
        "--accel",
        "kvm",
        "--cpu",
        "host",
        "--timeout",
        "60",
    ];
    let run = runner(&args);
    let problems = problems(&run);
    assert!(
        problems.is_empty(),
        "keel {}:\n{}\n{}",
        args.join(" "),
        problems.join("\n"),
        run.report()
    );
}

/// The default image comes up and says so.
#[test]
fn default_image_ready() {
    let run = runner(&["--until", READY_LINE, "--timeout", READY_TIMEOUT]);
    assert_eq!(
        run.code,
        Some(i32::from(EXIT_OK)),
        "no `{READY_LINE}`\n{}",
        run.report()
    );
    assert!(run.serial.contains(READY_LINE), "{}", run.report());
    assert!(!run.serial.contains(PANIC_MARKER), "{}", run.report());
}

/// A scripted shell session on the default image: `echo` goes through the name service
/// and the echo server and its answer comes back on COM1; `mem` reports the boot-info
/// untypeds; an unknown command is refused; the key-value store's client prints its
/// results; `ps` lists the threads init started, all running (the second `ps`: the
/// key-value client exited, its main having returned); `caps echo` lists the
/// echo server's own CSpace, typed by the kernel (init looks); the echo server's log
/// line arrives whole through the serial server;
/// `fault echo` makes the echo server fault, init reports it and restarts it, and the
/// new instance answers the next `echo` (and `ps` says it was restarted); `sleep 100`
/// waits at least 100 ms of the timer server's 10 ms ticks;
/// `poweroff` turns the machine off through the power server (ACPI S5): QEMU exits
/// by itself with status 0 right after `keel: powering off`, which the runner (a plain
/// run, no `--until`) counts as success.
#[test]
fn default_image_shell_session() {
    // The blank first line is a sacrifice: whatever sits in the UART when the kernel
    // programs it (one byte before FIFOs are on) is cleared with the FIFOs.
    let script = "\necho shell-says-42\nbogus\nmem\nps\ncaps echo\nfault echo\n\
                  echo back-after-restart\nps\nsleep 100\ntest\nbench\npoweroff\n";
    let run = runner_with_input(&["--timeout", READY_TIMEOUT], Some(script));
    assert_eq!(run.code, Some(i32::from(EXIT_OK)), "{}", run.report());
    assert!(
        run.log.contains("PASSED: powered off"),
        "the runner did not see a power off\n{}",
        run.report()
    );
    let lines: Vec<&str> = run.serial.lines().map(str::trim_end).collect();
    assert_eq!(
        lines.iter().rev().find(|l| !l.is_empty()),
        Some(&POWER_OFF_LINE),
        "the power-off line is not the last\n{}",
        run.report()
    );
    assert!(
        lines.contains(&"shell-says-42"),
        "no echo answer on its own line\n{}",
        run.report()
    );
    // The key-value store's client (doc/writing-a-server.md's worked example) ran once
    // after `keel: ready`: a value came back and the table filled up.
    for line in [
        "kvclient: get 1: Ok(Some(100))",
        "kvclient: remove 2: Err(NotFound)",
        "kvclient: 15 more puts fit, the next one: Err(Full)",
    ] {
        assert!(lines.contains(&line), "no {line:?}\n{}", run.report());
    }
    assert!(
        run.serial.contains("unknown command 'bogus'"),
        "{}",
        run.report()
    );
    let mem = lines
        .iter()
        .find(|l| l.contains("untyped:"))
        .unwrap_or_else(|| panic!("no mem line\n{}", run.report()));
    let ram_kib: u64 = mem
        .split("untyped: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the RAM figure of {mem:?}"));
    // The default image boots with 256 MiB: most of it must reach init as untyped RAM.
    assert!(
        (128 * 1024..256 * 1024).contains(&ram_kib),
        "{mem:?}\n{}",
        run.report()
    );
    // ps: a header, then init and every thread it started, each running.
    let header = lines
        .iter()
        .position(|l| l.starts_with("NAME") && l.contains("STATE"))
        .unwrap_or_else(|| panic!("no ps table\n{}", run.report()));
    let table: Vec<Vec<&str>> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.starts_with("keel>"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    for name in [
        "init", "names", "echo", "serial", "timer", "power", "kv", "shell",
    ] {
        let row = table
            .iter()
            .find(|r| r.first() == Some(&name))
            .unwrap_or_else(|| panic!("ps has no {name}\n{}", run.report()));
        assert_eq!(row.get(5), Some(&"running"), "{row:?}\n{}", run.report());
    }
    // The servers loaded from their modules use part of their memory budget.
    for name in ["names", "echo", "serial", "timer", "power", "kv"] {
        let row = table.iter().find(|r| r[0] == name).unwrap();
        let (used, budget) = row[4].split_once('/').unwrap_or(("?", "?"));
        let (used, budget) = (used.parse::<u64>(), budget.parse::<u64>());
        assert!(
            matches!((&used, &budget), (Ok(u), Ok(b)) if 0 < *u && u < b),
            "{row:?}: no KiB used/budget\n{}",
            run.report()
        );
    }
    let priority = |name: &str| table.iter().find(|r| r[0] == name).map(|r| r[1]);
    assert_eq!(priority("names"), Some("200"), "{}", run.report());
    assert_eq!(priority("shell"), Some("50"), "{}", run.report());
    // The manifest places the echo server on CPU 1 (the session runs with 2 CPUs).
    let cpu = |name: &str| table.iter().find(|r| r[0] == name).map(|r| r[2]);
    assert_eq!(cpu("echo"), Some("1"), "{}", run.report());
    assert_eq!(cpu("names"), Some("0"), "{}", run.report());
    // caps echo: its TCB, the endpoint it serves, its name-service and fault endpoints,
    // each slot typed by the kernel.
    let caps: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("caps of echo"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .copied()
        .collect();
    assert!(
        caps.iter().any(|c| c.starts_with("  slots ")),
        "no slot window in {caps:?}\n{}",
        run.report()
    );
    let caps: Vec<&str> = caps
        .into_iter()
        .filter(|c| c.starts_with("  slot "))
        .collect();
    assert_eq!(caps.len(), 6, "{caps:?}\n{}", run.report());
    for (cap, (slot, kind, role)) in caps.iter().zip([
        ("1", "tcb", "its own TCB"),
        ("2", "cnode", "its own CNode"),
        ("3", "endpoint", "fault endpoint"),
        ("4", "endpoint", "serves as 'echo'"),
        ("5", "endpoint", "the name service"),
        ("8", "untyped", "the rest of its memory budget"),
    ]) {
        let words: Vec<&str> = cap.split_whitespace().collect();
        assert!(
            words.get(1) == Some(&slot) && words.get(2) == Some(&kind) && cap.contains(role),
            "{cap:?} is not slot {slot}, {kind} ({role})\n{}",
            run.report()
        );
    }
    // fault echo: reported, restarted, and the new instance answers.
    let fault_at = lines
        .iter()
        .position(|l| l.contains("init: server echo faulted") && l.contains("restarting it"))
        .unwrap_or_else(|| panic!("no fault report for echo\n{}", run.report()));
    let restarted_at = lines
        .iter()
        .position(|l| l.contains("init: server echo restarted"))
        .unwrap_or_else(|| panic!("echo was not restarted\n{}", run.report()));
    let answered_at = lines
        .iter()
        .position(|l| *l == "back-after-restart")
        .unwrap_or_else(|| panic!("no echo answer after the restart\n{}", run.report()));
    assert!(
        fault_at < restarted_at && restarted_at < answered_at,
        "fault {fault_at}, restart {restarted_at}, answer {answered_at}\n{}",
        run.report()
    );
    assert!(
        lines[fault_at..]
            .iter()
            .any(|l| l.starts_with("echo ") && l.contains("running (restarted 1 time(s))")),
        "the second ps does not show echo restarted\n{}",
        run.report()
    );
    // The key-value client's main returned long before: init recorded its exit.
    assert!(
        lines[fault_at..]
            .iter()
            .any(|l| l.starts_with("kvclient ") && l.trim_end().ends_with("exited")),
        "the second ps does not show kvclient exited\n{}",
        run.report()
    );
    // sleep 100: at least 11 ticks of 10 ms (rounded up, plus the tick under way).
    let slept = lines
        .iter()
        .find_map(|l| l.strip_prefix("slept 100 ms: "))
        .unwrap_or_else(|| panic!("no sleep answer\n{}", run.report()));
    let ticks: u64 = slept
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the ticks of {slept:?}"));
    assert!((11..100).contains(&ticks), "{slept:?}\n{}", run.report());
    // The echo server logs through the serial server (`log`), one whole line.
    assert!(
        lines.contains(&"INFO  echo: registered as 'echo'; answering calls"),
        "no log line from the echo server\n{}",
        run.report()
    );
    // test: every self-test passes (each prints its line), and the summary says so.
    let summary = lines
        .iter()
        .find_map(|l| l.strip_prefix("test: "))
        .unwrap_or_else(|| panic!("no self-test summary\n{}", run.report()));
    assert!(
        summary.ends_with(" passed, 0 failed") && !summary.starts_with("0 passed"),
        "{summary:?}\n{}",
        run.report()
    );
    assert!(
        !lines.iter().any(|l| l.contains("... FAIL")),
        "a self-test failed\n{}",
        run.report()
    );
    // bench: one result line with a cycle count per round trip.
    let bench = lines
        .iter()
        .find_map(|l| l.strip_prefix("bench: echo round trip: "))
        .unwrap_or_else(|| panic!("no bench result\n{}", run.report()));
    let cycles: u64 = bench
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the cycles of {bench:?}"));
    assert!(cycles > 0, "{bench:?}\n{}", run.report());
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("bench: ") && l.contains(" failed: ")),
        "a bench call failed\n{}",
        run.report()
    );
    assert!(!run.serial.contains(PANIC_MARKER), "{}", run.report());
    assert!(!run.serial.contains("still running"), "{}", run.report());
}

/// `reboot` restarts the machine through init's power service (the FADT's reset
/// register, else port 0xcf9): under `-no-reboot` QEMU exits with status 0 right after
/// `keel: restarting`, which the runner counts as success in a plain run.
#[test]
fn default_image_shell_reboot() {
    let run = runner_with_input(&["--timeout", READY_TIMEOUT], Some("\nreboot\n"));
    assert_eq!(run.code, Some(i32::from(EXIT_OK)), "{}", run.report());
    assert!(
        run.log.contains("PASSED: restarted"),
        "the runner did not see a restart\n{}",
        run.report()
    );
    let last = run
        .serial
        .lines()
        .map(str::trim_end)
        .rfind(|l| !l.is_empty());
    assert_eq!(last, Some(RESTART_LINE), "{}", run.report());
}

/// `poweroff` on the `pc` machine (PIIX4 power management): there QEMU acts on the S5
/// write only after the vCPU has run on for a while, so the power service must not say
/// "still running" too early. The run must end like the q35 session.
#[test]
fn default_image_poweroff_on_pc() {
    let args = ["--machine", "pc", "--timeout", READY_TIMEOUT];
    let run = runner_with_input(&args, Some("\npoweroff\n"));
    assert_eq!(run.code, Some(i32::from(EXIT_OK)), "{}", run.report());
    assert!(run.log.contains("PASSED: powered off"), "{}", run.report());
    let last = run
        .serial
        .lines()
        .map(str::trim_end)
        .rfind(|l| !l.is_empty());
    assert_eq!(last, Some(POWER_OFF_LINE), "{}", run.report());
}

/// Runs the test image with one defence switched off (`keel.unsafe.<name>`, see
/// kernel/hal/src/switches.rs) and returns the run, which must not be judged a success.
fn defence_off(switch: &str) -> Run {
    let args = ["--image", "test", "--cmdline", switch, "--timeout", "60"];
    let run = runner(&args);
    assert!(
        !problems(&run).is_empty(),
        "the run passed with {switch}\n{}",
        run.report()
    );
    assert_ne!(
        run.code,
        Some(0),
        "runner reported success with {switch}\n{}",
        run.report()
    );
    run
}

/// espfix64 off: the 16-bit-stack tests (one CPU, every CPU) see the kernel's ESP[31:16].
#[test]
fn defence_off_espfix_is_caught() {
    let run = defence_off("keel.unsafe.espfix");
    let p = protocol(&run.serial);
    for test in [
        "espfix_16bit_ss_keeps_user_esp_high_bits",
        "espfix_16bit_ss_keeps_user_esp_high_bits_on_every_cpu",
    ] {
        assert!(
            p.failed.iter().any(|t| t == test),
            "{test} did not fail\n{}",
            run.report()
        );
    }
}

/// Kernel restartable sequences off: an interrupt inside a sequence is not restarted.
#[test]
fn defence_off_rseq_is_caught() {
    let run = defence_off("keel.unsafe.rseq");
    let p = protocol(&run.serial);
    assert!(
        p.failed.iter().any(|t| t.starts_with("rseq_")),
        "no rseq test failed\n{}",
        run.report()
    );
}

/// User rseq fix-up off: a thread stopped inside a section resumes where it stopped,
/// commits a stale value and is never restarted.
#[test]
fn defence_off_user_rseq_is_caught() {
    let run = defence_off("keel.unsafe.user_rseq");
    let p = protocol(&run.serial);
    assert!(
        p.failed
            .iter()
            .any(|t| t == "user_rseq_abort_at_every_instruction_boundary"),
        "the user rseq injection test did not fail\n{}",
        run.report()
    );
}

/// TF and NT left in the SYSCALL flag mask: the NT+TF system call takes the kernel down
/// (the run must end without success, whatever the exact symptom).
#[test]
fn defence_off_fmask_is_caught() {
    defence_off("keel.unsafe.fmask");
}

/// The paranoid entry's RDGSBASE method off (always the IA32_GS_BASE sign test, cpu max):
/// the NMI-window test fails on its decoy GS base (a kernel-looking copy of the CPU's
/// area). Later tests would run user threads with GS base 0xffff_8000_0000_0000 whose
/// #DB the broken entry handles on that base and hangs, so the run stops at the FAILED
/// line (`--until`) instead of waiting for a timeout.
#[test]
fn defence_off_paranoid_is_caught() {
    let failed = "test paranoid_nmi_with_user_gs_base_in_kernel_mode ... FAILED";
    let args = [
        "--image",
        "test",
        "--cmdline",
        "keel.unsafe.paranoid",
        "--until",
        failed,
        "--timeout",
        "60",
    ];
    let run = runner(&args);
    assert!(
        run.code == Some(i32::from(EXIT_OK)) && run.serial.contains(failed),
        "the paranoid test did not fail with keel.unsafe.paranoid\n{}",
        run.report()
    );
}

/// Debug registers left loaded for a thread without breakpoints: a second thread's
/// write to the address the first one watched traps.
#[test]
fn defence_off_debug_regs_is_caught() {
    let run = defence_off("keel.unsafe.debug_regs");
    let p = protocol(&run.serial);
    assert!(
        p.failed
            .iter()
            .any(|t| t == "entry_debug_registers_do_not_outlive_their_thread"),
        "the debug-register test did not fail\n{}",
        run.report()
    );
}

/// No CLAC at interrupt and exception entry: a handler runs with the interrupted
/// context's RFLAGS.AC, so SMAP is suspended for that entry.
#[test]
fn defence_off_clac_is_caught() {
    let run = defence_off("keel.unsafe.clac");
    let p = protocol(&run.serial);
    assert!(
        p.failed
            .iter()
            .any(|t| t == "exception_entry_clears_rflags_ac"),
        "the CLAC test did not fail\n{}",
        run.report()
    );
}

/// The exit path's checks off: a thread that entered by SYSCALL with TF in its saved
/// RFLAGS leaves by SYSRET, which raises the single-step trap before the first user
/// instruction (a stop at the return address where the thread ran nothing).
#[test]
fn defence_off_sysret_is_caught() {
    let run = defence_off("keel.unsafe.sysret");
    let p = protocol(&run.serial);
    assert!(
        p.failed
            .iter()
            .any(|t| t == "entry_single_step_from_syscall_return_is_exact"),
        "the single-step-after-SYSCALL test did not fail\n{}",
        run.report()
    );
}

/// Register clearing off (`entry.clear_regs=off`, the supported switch): the user's
/// values reach the kernel stack in the registers the glue's prologue pushes.
#[test]
fn defence_off_clear_regs_is_caught() {
    let run = defence_off("entry.clear_regs=off");
    let p = protocol(&run.serial);
    assert!(
        p.failed
            .iter()
            .any(|t| t == "entry_user_registers_do_not_reach_the_kernel_stack"),
        "the register-clearing test did not fail\n{}",
        run.report()
    );
}

/// A kernel stack overflow lands on the #DF stack and is diagnosed, not a reset.
#[test]
fn stack_overflow_is_diagnosed() {
    let args = [
        "--image",
        "test",
        "--cmdline",
        "keel.test_stack_overflow",
        "--timeout",
        "60",
    ];
    let run = runner(&args);
    assert!(
        run.serial
            .lines()
            .any(|l| l.contains("diagnosis: kernel stack overflow into the guard page")),
        "no stack-overflow diagnosis\n{}",
        run.report()
    );
    assert!(
        protocol(&run.serial).panic,
        "the overflow must end in a kernel panic report\n{}",
        run.report()
    );
}
