//! The host machine: required tools (installed by `tools/setup`), OVMF firmware, and
//! whether /dev/kvm is hardware KVM.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::Paths;

/// Commands the runner needs on PATH.
pub const COMMANDS: [&str; 4] = ["qemu-system-x86_64", "grub-mkrescue", "xorriso", "mformat"];
/// GRUB module directories grub-mkrescue needs for a hybrid BIOS + UEFI image.
pub const GRUB_DIRS: [&str; 2] = ["/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi"];

/// UEFI firmware for QEMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Separate code and variable-store images, mapped as two pflash drives.
    Pflash {
        /// Read-only code image.
        code: PathBuf,
        /// Template of the variable store; QEMU gets a writable copy.
        vars: PathBuf,
    },
    /// One combined image, loaded with `-bios`.
    Combined(PathBuf),
}

/// Where distributions put OVMF: (code, vars) pairs first, then combined images.
const OVMF_PFLASH: [(&str, &str); 4] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/ovmf/OVMF_CODE.fd",
        "/usr/share/ovmf/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];
const OVMF_COMBINED: [&str; 3] = [
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/OVMF/OVMF.fd",
    "/usr/share/qemu/OVMF.fd",
];

/// Finds OVMF under /usr/share/OVMF or /usr/share/ovmf (and a few other usual places).
pub fn find_ovmf() -> Option<Firmware> {
    for (code, vars) in OVMF_PFLASH {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Some(Firmware::Pflash {
                code: code.into(),
                vars: vars.into(),
            });
        }
    }
    OVMF_COMBINED
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .map(Firmware::Combined)
}

/// Whether `name` is an executable file in one of PATH's directories.
fn on_path(name: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// The required host tools that are missing, described for a message.
pub fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = COMMANDS
        .iter()
        .filter(|c| !on_path(c))
        .map(|c| c.to_string())
        .collect();
    missing.extend(
        GRUB_DIRS
            .iter()
            .filter(|d| !Path::new(d).is_dir())
            .map(|d| d.to_string()),
    );
    if find_ovmf().is_none() {
        missing.push("OVMF (/usr/share/OVMF)".to_string());
    }
    missing
}

/// Makes sure the host tools exist, running `tools/setup` when some are missing.
pub fn ensure_tools(paths: &Paths) -> Result<(), String> {
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let setup = paths.root.join("tools/setup");
    eprintln!(
        "keel: missing host tools ({}); running {}",
        missing.join(", "),
        paths.show(&setup)
    );
    let status = Command::new(&setup)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", setup.display()))?;
    if !status.success() {
        return Err(format!("{} failed ({status})", paths.show(&setup)));
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        return Err(format!(
            "still missing after tools/setup: {}",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// `Ok` when /dev/kvm is hardware KVM that this user can open, else why not.
pub fn hardware_kvm() -> Result<(), String> {
    hardware_kvm_at(Path::new("/sys/module"), Path::new("/dev/kvm"))
}

/// [`hardware_kvm`] with the sysfs module directory and the device path as parameters.
pub fn hardware_kvm_at(sys_module: &Path, dev_kvm: &Path) -> Result<(), String> {
    if sys_module.join("kvm_pvm").exists() {
        return Err(format!(
            "{} is kvm_pvm, a software hypervisor ({} exists), not hardware KVM",
            dev_kvm.display(),
            sys_module.join("kvm_pvm").display()
        ));
    }
    if !dev_kvm.exists() {
        return Err(format!("no {}", dev_kvm.display()));
    }
    if !sys_module.join("kvm_intel").exists() && !sys_module.join("kvm_amd").exists() {
        return Err(format!(
            "{} exists but neither kvm_intel nor kvm_amd is loaded",
            dev_kvm.display()
        ));
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
        .map(drop)
        .map_err(|e| format!("cannot open {}: {e}", dev_kvm.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("keel-host-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("module")).unwrap();
        dir
    }

    #[test]
    fn kvm_pvm_is_software() {
        let dir = scratch("pvm");
        fs::create_dir(dir.join("module/kvm_pvm")).unwrap();
        fs::write(dir.join("kvm"), "").unwrap();
        let err = hardware_kvm_at(&dir.join("module"), &dir.join("kvm")).unwrap_err();
        assert!(err.contains("kvm_pvm, a software hypervisor"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn kvm_needs_device_and_vendor_module() {
        let dir = scratch("vendor");
        let err = hardware_kvm_at(&dir.join("module"), &dir.join("kvm")).unwrap_err();
        assert!(err.starts_with("no "), "{err}");
        fs::write(dir.join("kvm"), "").unwrap();
        let err = hardware_kvm_at(&dir.join("module"), &dir.join("kvm")).unwrap_err();
        assert!(err.contains("neither kvm_intel nor kvm_amd"), "{err}");
        fs::create_dir(dir.join("module/kvm_intel")).unwrap();
        assert_eq!(
            hardware_kvm_at(&dir.join("module"), &dir.join("kvm")),
            Ok(())
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
