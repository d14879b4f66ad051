//! Where the runner finds its inputs and puts its outputs, fixed at compile time by build.rs.

use std::path::{Path, PathBuf};

/// The paths the runner works with.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The repository root (`KEEL_ROOT`).
    pub root: PathBuf,
    /// The kernel ELF (`KEEL_KERNEL_ELF`).
    pub kernel_elf: PathBuf,
    /// The directory holding the userland ELFs (`KEEL_USERLAND_DIR`).
    pub userland_dir: PathBuf,
    /// `target/keel`: the nested build's target directory, where ISOs go too.
    pub out_dir: PathBuf,
}

impl Paths {
    /// The paths build.rs set for this build of the runner.
    pub fn from_build() -> Self {
        let kernel_elf = PathBuf::from(env!("KEEL_KERNEL_ELF"));
        // KEEL_KERNEL_ELF is <target>/keel/x86_64-unknown-none/release/keel-kernel.
        let out_dir = kernel_elf
            .ancestors()
            .nth(3)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(env!("KEEL_ROOT")).join("target/keel"));
        Paths {
            root: PathBuf::from(env!("KEEL_ROOT")),
            kernel_elf,
            userland_dir: PathBuf::from(env!("KEEL_USERLAND_DIR")),
            out_dir,
        }
    }

    /// `path` relative to the repository root when it is inside it, for short messages.
    pub fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}
