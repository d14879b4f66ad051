//! Builds the kernel and the userland programs for `x86_64-unknown-none` with nested
//! cargo calls, so that `cargo run` / `cargo test` at the root always boot fresh images.
//!
//! The nested builds use their own target directory (`target/keel`) and their own
//! RUSTFLAGS; the outer build's flags (`CARGO_ENCODED_RUSTFLAGS`, which belong to the
//! host) are removed. The paths of the results reach the runner as compile-time
//! environment variables `KEEL_KERNEL_ELF` and `KEEL_USERLAND_DIR`, and the names of
//! the server programs (the crates of `userland/programs`) as `KEEL_SERVER_PROGRAMS`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    for watched in ["kernel", "userland", "linker.ld", "build.rs"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=KEEL_SKIP_TARGET_BUILD");

    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("keel"),
        None => root.join("target").join("keel"),
    };
    let out = target_dir.join(TARGET).join("release");
    println!(
        "cargo:rustc-env=KEEL_KERNEL_ELF={}",
        out.join("keel-kernel").display()
    );
    println!("cargo:rustc-env=KEEL_USERLAND_DIR={}", out.display());
    println!("cargo:rustc-env=KEEL_ROOT={}", root.display());
    println!(
        "cargo:rustc-env=KEEL_SERVER_PROGRAMS={}",
        server_programs(&root).join(",")
    );

    if env::var_os("KEEL_SKIP_TARGET_BUILD").is_some() {
        return;
    }

    let linker_script = root.join("linker.ld");
    let kernel_flags = [
        "-Ccode-model=kernel".to_string(),
        "-Crelocation-model=static".to_string(),
        "-Cforce-frame-pointers=yes".to_string(),
        format!("-Clink-arg=-T{}", linker_script.display()),
        "-Clink-arg=-znoexecstack".to_string(),
    ];
    nested_build(&root.join("kernel/Cargo.toml"), &target_dir, &kernel_flags);

    let user_flags = [
        "-Crelocation-model=static".to_string(),
        "-Cforce-frame-pointers=yes".to_string(),
    ];
    nested_build(&root.join("userland/Cargo.toml"), &target_dir, &user_flags);
}

/// The server programs: every crate directory of `userland/programs` (its binary has
/// the directory's name), sorted. The runner puts each on the ISO as a boot module.
fn server_programs(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("userland/programs"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `cargo build --release` for one target project; on failure prints its output and
/// fails the outer build.
fn nested_build(manifest: &Path, target_dir: &Path, rustflags: &[String]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .current_dir(manifest.parent().expect("manifest has a directory"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", manifest.display()));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!(
            "building {} for {TARGET} failed (output above)",
            manifest.display()
        );
    }
}
