//! One run of the runner: check the host, build the ISO, boot QEMU, watch its serial
//! output, stop it on success, timeout, panic or interrupt, and judge the result.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{Accel, Cli, Image};
use crate::host::{self, Firmware};
use crate::paths::Paths;
use crate::qemu::{self, Boot, Config};
use crate::verdict::{self, EXIT_HOST_ERROR, EXIT_OK, Ending, Mode, Observed, Verdict};

/// Timeout for `--until` and the test image when `--timeout` is not given.
pub const DEFAULT_CHECK_TIMEOUT: u64 = 300;
/// How long QEMU may keep running after a panic line (to print the rest of the panic).
pub const PANIC_GRACE: Duration = Duration::from_secs(3);
/// How long QEMU gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// setpriv (util-linux) makes QEMU die with the runner even if the runner is SIGKILLed.
const SETPRIV: &str = "/usr/bin/setpriv";

/// Runs the runner; prints the verdict and returns the exit status.
pub fn main(cli: Cli) -> ExitCode {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!(
            "keel: warning: cannot catch SIGINT/SIGTERM ({e}); QEMU may outlive an interrupted runner"
        );
    }
    match run(&cli, &interrupted) {
        Ok(verdict) => {
            eprintln!("keel: {verdict}");
            ExitCode::from(verdict.code)
        }
        Err(e) => {
            eprintln!("keel: error: {e}");
            ExitCode::from(EXIT_HOST_ERROR)
        }
    }
}

/// What `--until`/`--image` ask the runner to check.
pub fn mode_of(cli: &Cli) -> Mode {
    match (&cli.until, cli.image) {
        (Some(pattern), _) => Mode::Until(pattern.clone()),
        (None, Image::Test) => Mode::CheckTests,
        (None, _) => Mode::Run,
    }
}

/// The timeout in effect: `--timeout`, else [`DEFAULT_CHECK_TIMEOUT`] when checking, else none.
pub fn timeout_of(cli: &Cli, mode: &Mode) -> Option<u64> {
    cli.timeout.or(match mode {
        Mode::Run => None,
        Mode::Until(_) | Mode::CheckTests => Some(DEFAULT_CHECK_TIMEOUT),
    })
}

/// Deletes this run's copy of the OVMF variable store when dropped.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

fn run(cli: &Cli, interrupted: &AtomicBool) -> Result<Verdict, String> {
    let paths = Paths::from_build();
    host::ensure_tools(&paths)?;

    let (mut accel, mut cpu) = (cli.accel, cli.cpu.clone());
    if accel == Accel::Kvm
        && let Err(why) = host::hardware_kvm()
    {
        eprintln!("keel: not using KVM: {why}; using TCG");
        accel = Accel::Tcg;
        if cpu == "host" {
            eprintln!("keel: -cpu host needs KVM; using -cpu max");
            cpu = "max".to_string();
        }
    }

    // Tell the kernel how it is measured: benchmarks report instructions under
    // `-icount` and mark hardware-KVM runs.
    let mut cmdline = cli.cmdline.clone();
    if cli.icount {
        cmdline.push_str(" keel.icount");
    }
    if accel == Accel::Kvm {
        cmdline.push_str(" keel.accel=kvm");
    }
    let iso = crate::grub::build_iso(&paths, cli.image, cli.smp, &cmdline)?;

    let mut scratch = Scratch(None);
    let boot = if !cli.uefi {
        Boot::Bios
    } else {
        match host::find_ovmf().ok_or("no OVMF firmware found (run tools/setup)")? {
            Firmware::Combined(image) => Boot::UefiCombined(image),
            Firmware::Pflash { code, vars } => {
                let dir = paths.out_dir.join("ovmf");
                fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let copy = dir.join(format!(
                    "{}-vars-{}.fd",
                    cli.image.name(),
                    std::process::id()
                ));
                fs::copy(&vars, &copy)
                    .map_err(|e| format!("cannot copy {}: {e}", vars.display()))?;
                if !cli.dry_run {
                    scratch.0 = Some(copy.clone());
                }
                Boot::UefiPflash { code, vars: copy }
            }
        }
    };

    let config = Config {
        accel,
        cpu,
        smp: cli.smp,
        mem: cli.mem.clone(),
        machine: cli.machine,
        boot,
        gdb: cli.gdb,
        icount: cli.icount,
        display: cli.display.clone(),
        iso,
        extra: cli.qemu_args.clone(),
    };
    let args = config.args();
    let line = qemu::shell_line(qemu::QEMU, &args);
    if cli.dry_run {
        println!("{line}");
        return Ok(Verdict {
            code: EXIT_OK,
            message: "dry run: QEMU not started".to_string(),
        });
    }
    let mode = mode_of(cli);
    let timeout = timeout_of(cli, &mode);
    eprintln!("keel: booting the {} image: {line}", cli.image.name());
    if cli.gdb {
        eprintln!(
            "keel: QEMU waits for gdb; attach with: gdb {} -ex 'target remote :1234'",
            paths.kernel_elf.display()
        );
    }

    let mut command = if Path::new(SETPRIV).is_file() {
        let mut c = Command::new(SETPRIV);
        c.args(["--pdeathsig", "KILL", qemu::QEMU]);
        c
    } else {
        Command::new(qemu::QEMU)
    };
    command.args(&args);
    command.stdin(if matches!(mode, Mode::Run | Mode::Until(_)) {
        Stdio::inherit()
    } else {
        Stdio::null()
    });

    let started = Instant::now();
    let (seen, ending) = supervise(
        command,
        &mode,
        timeout.map(Duration::from_secs),
        interrupted,
    )?;
    if mode == Mode::CheckTests {
        for (name, why) in &seen.skipped {
            eprintln!("keel: skipped: {name} ({why})");
        }
        if !seen.timings.is_empty() {
            eprintln!("keel: slowest tests: {}", seen.slowest(3).join(", "));
        }
        if let Ending::TimedOut(_) = ending {
            let last = seen
                .timings
                .last()
                .map_or("none", |(name, _)| name.as_str());
            eprintln!(
                "keel: stopped {:.1} s after the last test result (last: {last})",
                seen.since_last_result.as_secs_f64()
            );
        }
        if let Some((passed, failed)) = seen.summary
            && (passed as usize, failed as usize) != (seen.ok.len(), seen.failed.len())
        {
            eprintln!(
                "keel: warning: the summary says {passed} passed, {failed} failed, but the serial output \
                 has {} ok and {} FAILED lines",
                seen.ok.len(),
                seen.failed.len()
            );
        }
    }
    let mut verdict = verdict::judge(&mode, &seen, ending);
    verdict.message = format!(
        "{} ({:.1} s)",
        verdict.message,
        started.elapsed().as_secs_f64()
    );
    Ok(verdict)
}

/// Starts QEMU with its stdout piped, copies the serial output to our stdout while
/// watching it, and stops QEMU when the mode, the timeout, a panic or an interrupt says so.
pub fn supervise(
    mut command: Command,
    mode: &Mode,
    timeout: Option<Duration>,
    interrupted: &AtomicBool,
) -> Result<(Observed, Ending), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start QEMU: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("QEMU has no stdout pipe")?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });

    let start = Instant::now();
    let deadline = timeout.map(|t| start + t);
    let pattern = match mode {
        Mode::Until(p) => Some(p.as_bytes()),
        _ => None,
    };
    let mut out = io::stdout();
    let mut seen = Observed::default();
    let mut all: Vec<u8> = Vec::new();
    let mut line_start = 0;
    let mut panic_deadline: Option<Instant> = None;
    let mut last_result = start;
    let ending = loop {
        if interrupted.load(Ordering::SeqCst) {
            stop(&mut child);
            break Ending::Interrupted;
        }
        let now = Instant::now();
        if let Some(d) = deadline
            && now >= d
        {
            stop(&mut child);
            break Ending::TimedOut(timeout.unwrap_or_default().as_secs());
        }
        if let Some(d) = panic_deadline
            && now >= d
        {
            stop(&mut child);
            break Ending::PanicStopped;
        }
        let mut wait = Duration::from_millis(100);
        for d in [deadline, panic_deadline].into_iter().flatten() {
            wait = wait.min(d.saturating_duration_since(now));
        }
        match rx.recv_timeout(wait) {
            Ok(chunk) => {
                // The serial output goes on even if our stdout is gone; ignore write errors.
                let _ = out.write_all(&chunk).and_then(|()| out.flush());
                let search_from = all.len().saturating_sub(pattern.map_or(0, <[u8]>::len));
                all.extend_from_slice(&chunk);
                while let Some(pos) = all[line_start..].iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&all[line_start..line_start + pos]);
                    if let Some(name) = verdict::result_name(&line) {
                        let now = Instant::now();
                        seen.timings.push((name, now - last_result));
                        last_result = now;
                    }
                    seen.line(&line);
                    line_start += pos + 1;
                }
                if seen.panic.is_some() && panic_deadline.is_none() {
                    panic_deadline = Some(Instant::now() + PANIC_GRACE);
                }
                if let Some(p) = pattern
                    && verdict::contains(&all[search_from..], p)
                {
                    stop(&mut child);
                    break Ending::PatternSeen;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map_err(|e| format!("cannot wait for QEMU: {e}"))?;
                break Ending::Exited(status.code());
            }
        }
    };
    if line_start < all.len() {
        seen.line(&String::from_utf8_lossy(&all[line_start..]));
    }
    seen.since_last_result = last_result.elapsed();
    let _ = reader.join();
    // QEMU exits on the same Ctrl-C that interrupts us: report the interrupt, not its status.
    let ending = if interrupted.load(Ordering::SeqCst) {
        Ending::Interrupted
    } else {
        ending
    };
    Ok((seen, ending))
}

/// Stops QEMU: SIGTERM (it restores the terminal), then SIGKILL after [`TERM_GRACE`].
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let until = Instant::now() + TERM_GRACE;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("keel").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn modes_and_timeouts() {
        assert_eq!(mode_of(&cli(&[])), Mode::Run);
        assert_eq!(timeout_of(&cli(&[]), &Mode::Run), None);
        assert_eq!(mode_of(&cli(&["--image", "test"])), Mode::CheckTests);
        assert_eq!(
            timeout_of(&cli(&["--image", "test"]), &Mode::CheckTests),
            Some(DEFAULT_CHECK_TIMEOUT)
        );
        let c = cli(&["--until", "keel: ready", "--timeout", "120"]);
        assert_eq!(mode_of(&c), Mode::Until("keel: ready".into()));
        assert_eq!(timeout_of(&c, &mode_of(&c)), Some(120));
        assert_eq!(
            mode_of(&cli(&["--image", "test", "--until", "x"])),
            Mode::Until("x".into())
        );
    }

    fn shell(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]).stdin(Stdio::null());
        c
    }

    #[test]
    fn supervise_sees_exit_status_and_lines() {
        let never = AtomicBool::new(false);
        let (seen, ending) = supervise(
            shell("printf 'test a ... ok\\r\\n1 passed, 0 failed'; exit 33"),
            &Mode::CheckTests,
            None,
            &never,
        )
        .unwrap();
        assert_eq!(ending, Ending::Exited(Some(33)));
        assert_eq!(seen.ok, ["a"]);
        assert_eq!(seen.summary, Some((1, 0)));
    }

    #[test]
    fn supervise_stops_on_pattern_and_timeout() {
        let never = AtomicBool::new(false);
        let started = Instant::now();
        let until = Mode::Until("keel: ready".into());
        let split = shell("echo 'keel: rea'; sleep 0.2; echo 'dy'; exec sleep 30");
        let (_, ending) = supervise(split, &until, Some(Duration::from_secs(1)), &never).unwrap();
        assert_eq!(
            ending,
            Ending::TimedOut(1),
            "a pattern split by a newline does not match"
        );
        let (_, ending) = supervise(
            shell("printf 'keel: '; sleep 0.2; echo ready; exec sleep 30"),
            &until,
            None,
            &never,
        )
        .unwrap();
        assert_eq!(ending, Ending::PatternSeen);
        let (_, ending) = supervise(
            shell("exec sleep 30"),
            &Mode::Run,
            Some(Duration::from_millis(300)),
            &never,
        )
        .unwrap();
        assert_eq!(ending, Ending::TimedOut(0));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn supervise_stops_after_panic() {
        let never = AtomicBool::new(false);
        let (seen, ending) = supervise(
            shell("echo 'KERNEL PANIC: boom'; exec sleep 30"),
            &Mode::CheckTests,
            None,
            &never,
        )
        .unwrap();
        assert_eq!(ending, Ending::PanicStopped);
        assert_eq!(seen.panic.as_deref(), Some("KERNEL PANIC: boom"));
    }

    #[test]
    fn supervise_honours_interrupt() {
        let interrupted = AtomicBool::new(true);
        let (_, ending) =
            supervise(shell("exec sleep 30"), &Mode::Run, None, &interrupted).unwrap();
        assert_eq!(ending, Ending::Interrupted);
    }
}
