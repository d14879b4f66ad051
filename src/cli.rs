//! The runner's command-line flags (clap derive); doc/runner.md describes each one.

use clap::{Parser, ValueEnum};

/// Builds a Keel GRUB image and boots it in QEMU with the serial port on stdout.
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(name = "keel", version, about)]
pub struct Cli {
    /// Which image to boot.
    #[arg(long, value_enum, default_value_t = Image::Default)]
    pub image: Image,
    /// QEMU accelerator; kvm is used only where /dev/kvm is hardware KVM, else TCG.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    pub accel: Accel,
    /// QEMU CPU model (`qemu64` has no FSGSBASE; `host` needs KVM).
    #[arg(long, default_value = "max")]
    pub cpu: String,
    /// Number of CPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub smp: u32,
    /// Guest memory, as QEMU's -m takes it (128M, 4G, ...).
    #[arg(long, default_value = "256M", value_parser = parse_mem)]
    pub mem: String,
    /// QEMU machine type.
    #[arg(long, value_enum, default_value_t = Machine::Q35)]
    pub machine: Machine,
    /// Boot through UEFI firmware (OVMF) instead of the BIOS (SeaBIOS).
    #[arg(long)]
    pub uefi: bool,
    /// Start QEMU halted with a gdb server on :1234 (`-s -S`).
    #[arg(long)]
    pub gdb: bool,
    /// Count instructions exactly: `-icount shift=0,align=off,sleep=off`.
    #[arg(long)]
    pub icount: bool,
    /// Words appended to the image's kernel command line.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cmdline: String,
    /// Exit 0 as soon as the serial output contains PATTERN (and stop QEMU).
    #[arg(long, value_name = "PATTERN")]
    pub until: Option<String>,
    /// Stop QEMU and fail after SECS seconds (default: 300 with --until or for the
    /// test image, none otherwise).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// QEMU display backend (gtk, sdl, curses, vnc=:0, ...); default: none.
    #[arg(long, value_name = "BACKEND")]
    pub display: Option<String>,
    /// Build the ISO and print the QEMU command line, but do not boot.
    #[arg(long)]
    pub dry_run: bool,
    /// Extra arguments passed to QEMU as they are (after `--`).
    #[arg(last = true, value_name = "QEMU_ARGS")]
    pub qemu_args: Vec<String>,
}

/// The bootable images.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    /// Root task keel-init; prints `keel: ready` when the system is up.
    Default,
    /// Root task keel-tests: the on-target test suite (protocol checked).
    Test,
    /// Root task keel-bench: the on-target benchmarks.
    Bench,
}

impl Image {
    /// The image's name: ISO file and grub template stem.
    pub fn name(self) -> &'static str {
        match self {
            Image::Default => "default",
            Image::Test => "test",
            Image::Bench => "bench",
        }
    }

    /// The kernel command line of the image before `--cmdline`.
    pub fn base_cmdline(self) -> String {
        match self {
            Image::Default => "log=info".to_string(),
            Image::Test => format!("log=info {}", keel_abi::harness::CMDLINE_RUN_TESTS),
            Image::Bench => "log=warn keel.bench".to_string(),
        }
    }

    /// The root task, the first module of the image.
    pub fn root_task(self) -> &'static str {
        match self {
            Image::Default => "keel-init",
            Image::Test => "keel-tests",
            Image::Bench => "keel-bench",
        }
    }
}

/// QEMU accelerators.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's software emulation.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
}

/// QEMU machine types.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// i440FX + PIIX.
    Pc,
    /// Q35 + ICH9.
    Q35,
}

impl Machine {
    /// QEMU's name for the machine.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }
}

/// Checks a memory size as QEMU's `-m` takes it: a number with an optional K/M/G/T suffix
/// (no suffix means MiB); returns it with an upper-case suffix.
pub fn parse_mem(s: &str) -> Result<String, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 256M or 4G"))?;
    let mib = match suffix.to_ascii_uppercase().as_str() {
        "K" => number / 1024,
        "" | "M" => number,
        "G" => number.saturating_mul(1024),
        "T" => number.saturating_mul(1024 * 1024),
        _ => {
            return Err(format!(
                "`{s}`: unknown size suffix `{suffix}` (use K, M, G or T)"
            ));
        }
    };
    if mib < 16 {
        return Err(format!("`{s}` is less than 16M"));
    }
    Ok(format!("{number}{}", suffix.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["keel"]).unwrap();
        assert_eq!(cli.image, Image::Default);
        assert_eq!(cli.accel, Accel::Tcg);
        assert_eq!(cli.cpu, "max");
        assert_eq!(cli.smp, 2);
        assert_eq!(cli.mem, "256M");
        assert_eq!(cli.machine, Machine::Q35);
        assert!(!cli.uefi && !cli.gdb && !cli.icount && !cli.dry_run);
        assert_eq!(cli.cmdline, "");
        assert_eq!(cli.until, None);
        assert_eq!(cli.timeout, None);
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "keel",
            "--image",
            "test",
            "--accel",
            "kvm",
            "--cpu",
            "qemu64",
            "--smp",
            "4",
            "--mem",
            "4g",
            "--machine",
            "pc",
            "--uefi",
            "--gdb",
            "--icount",
            "--cmdline",
            "-x keel.test_fail",
            "--until",
            "keel: ready",
            "--timeout",
            "120",
            "--",
            "-d",
            "int",
        ])
        .unwrap();
        assert_eq!(cli.image, Image::Test);
        assert_eq!(cli.accel, Accel::Kvm);
        assert_eq!(cli.smp, 4);
        assert_eq!(cli.mem, "4G");
        assert_eq!(cli.machine, Machine::Pc);
        assert!(cli.uefi && cli.gdb && cli.icount);
        assert_eq!(cli.cmdline, "-x keel.test_fail");
        assert_eq!(cli.until.as_deref(), Some("keel: ready"));
        assert_eq!(cli.timeout, Some(120));
        assert_eq!(cli.qemu_args, ["-d", "int"]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["keel", "--smp", "0"]).is_err());
        assert!(Cli::try_parse_from(["keel", "--timeout", "0"]).is_err());
        assert!(Cli::try_parse_from(["keel", "--image", "foo"]).is_err());
        assert!(Cli::try_parse_from(["keel", "--mem", "4X"]).is_err());
        assert!(Cli::try_parse_from(["keel", "--mem", "1M"]).is_err());
    }

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem("128M").unwrap(), "128M");
        assert_eq!(parse_mem("4g").unwrap(), "4G");
        assert_eq!(parse_mem("512").unwrap(), "512");
        assert!(parse_mem("G").is_err());
        assert!(parse_mem("").is_err());
    }

    #[test]
    fn images() {
        assert_eq!(Image::Test.base_cmdline(), "log=info keel.test");
        assert_eq!(Image::Bench.base_cmdline(), "log=warn keel.bench");
        assert_eq!(Image::Default.base_cmdline(), "log=info");
        assert_eq!(Image::Test.root_task(), "keel-tests");
    }
}
