//! The QEMU command line of a boot, as a pure function of the settings.

use std::path::{Path, PathBuf};

use crate::cli::{Accel, Machine};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// The isa-debug-exit device at the port `keel_abi::exit` names.
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
/// Exact instruction counting (DESIGN.md §8).
pub const ICOUNT: &str = "shift=0,align=off,sleep=off";

/// Firmware as QEMU gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// QEMU's default BIOS (SeaBIOS).
    Bios,
    /// OVMF code (read-only pflash) and a writable copy of its variable store.
    UefiPflash {
        /// OVMF_CODE image.
        code: PathBuf,
        /// This run's own copy of OVMF_VARS.
        vars: PathBuf,
    },
    /// A combined OVMF image loaded with `-bios`.
    UefiCombined(PathBuf),
}

/// Everything that decides the QEMU command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Accelerator actually used (after the KVM check).
    pub accel: Accel,
    /// CPU model.
    pub cpu: String,
    /// Number of CPUs.
    pub smp: u32,
    /// Memory size as `-m` takes it.
    pub mem: String,
    /// Machine type.
    pub machine: Machine,
    /// Firmware.
    pub boot: Boot,
    /// `-s -S`.
    pub gdb: bool,
    /// `-icount ...`.
    pub icount: bool,
    /// Display backend; `None` means `-display none`.
    pub display: Option<String>,
    /// The ISO to boot.
    pub iso: PathBuf,
    /// Extra arguments, appended as they are.
    pub extra: Vec<String>,
}

/// A path inside a QEMU option value: commas are doubled.
fn opt_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

impl Config {
    /// QEMU's arguments (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
        let accel = match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        };
        push(&[
            "-machine",
            self.machine.qemu_name(),
            "-accel",
            accel,
            "-cpu",
            &self.cpu,
        ]);
        push(&["-smp", &self.smp.to_string(), "-m", &self.mem]);
        push(&["-no-reboot", "-device", DEBUG_EXIT_DEVICE]);
        push(&["-display", self.display.as_deref().unwrap_or("none")]);
        push(&["-serial", "stdio", "-nic", "none"]);
        push(&[
            "-drive",
            &format!(
                "file={},media=cdrom,format=raw,readonly=on",
                opt_path(&self.iso)
            ),
        ]);
        push(&["-boot", "d"]);
        match &self.boot {
            Boot::Bios => {}
            Boot::UefiPflash { code, vars } => {
                push(&[
                    "-drive",
                    &format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        opt_path(code)
                    ),
                ]);
                push(&[
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", opt_path(vars)),
                ]);
            }
            Boot::UefiCombined(image) => push(&["-bios", &image.display().to_string()]),
        }
        if self.icount {
            push(&["-icount", ICOUNT]);
        }
        if self.gdb {
            push(&["-s", "-S"]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// A command line as a shell would take it back (for the progress line).
pub fn shell_line(program: &str, args: &[String]) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./=,:@%+-".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            accel: Accel::Tcg,
            cpu: "max".into(),
            smp: 2,
            mem: "256M".into(),
            machine: Machine::Q35,
            boot: Boot::Bios,
            gdb: false,
            icount: false,
            display: None,
            iso: "/t/keel/test.iso".into(),
            extra: vec![],
        }
    }

    #[test]
    fn default_command_line() {
        assert_eq!(
            shell_line(QEMU, &config().args()),
            "qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 2 -m 256M -no-reboot \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -display none -serial stdio -nic none \
             -drive file=/t/keel/test.iso,media=cdrom,format=raw,readonly=on -boot d"
        );
    }

    #[test]
    fn every_option() {
        let c = Config {
            accel: Accel::Kvm,
            cpu: "host".into(),
            smp: 4,
            mem: "4G".into(),
            machine: Machine::Pc,
            boot: Boot::UefiPflash {
                code: "/o/CODE.fd".into(),
                vars: "/t/a,b/VARS.fd".into(),
            },
            gdb: true,
            icount: true,
            display: Some("gtk".into()),
            iso: "/t/x.iso".into(),
            extra: vec!["-d".into(), "int".into()],
        };
        let line = shell_line(QEMU, &c.args());
        assert!(
            line.starts_with("qemu-system-x86_64 -machine pc -accel kvm -cpu host -smp 4 -m 4G "),
            "{line}"
        );
        assert!(line.contains(" -display gtk "), "{line}");
        assert!(
            line.contains(" -drive if=pflash,format=raw,unit=0,readonly=on,file=/o/CODE.fd "),
            "{line}"
        );
        assert!(
            line.contains(" -drive if=pflash,format=raw,unit=1,file=/t/a,,b/VARS.fd "),
            "{line}"
        );
        assert!(
            line.ends_with(" -icount shift=0,align=off,sleep=off -s -S -d int"),
            "{line}"
        );
    }

    #[test]
    fn combined_ovmf() {
        let c = Config {
            boot: Boot::UefiCombined("/usr/share/ovmf/OVMF.fd".into()),
            ..config()
        };
        assert!(shell_line(QEMU, &c.args()).ends_with(" -boot d -bios /usr/share/ovmf/OVMF.fd"));
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_line("a", &["b c".into(), "it's".into(), "".into()]),
            r"a 'b c' 'it'\''s' ''"
        );
    }
}
