//! GRUB images: renders `grub/<image>.cfg`, stages the kernel and modules, runs grub-mkrescue.
//!
//! A template names its modules itself (`module2 /boot/NAME NAME` lines, the first one is
//! the root task) and holds the placeholder [`CMDLINE_PLACEHOLDER`] where the kernel
//! command line goes. An ISO is rebuilt only when its inputs (kernel, modules, rendered
//! grub.cfg) changed; a lock file serializes concurrent runners, and the new ISO is
//! renamed into place so a QEMU still reading the old one is not disturbed.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, UNIX_EPOCH};

use crate::cli::Image;
use crate::paths::Paths;

/// Placeholder for the kernel command line in the templates.
pub const CMDLINE_PLACEHOLDER: &str = "@CMDLINE@";
/// Placeholder line for the server programs' modules: the runner puts a
/// `module2 /boot/NAME NAME` line there for each crate of `userland/programs`.
pub const SERVERS_PLACEHOLDER: &str = "@SERVERS@";

/// The server programs (the crates of `userland/programs`, from the build script).
pub fn server_programs() -> Vec<&'static str> {
    env!("KEEL_SERVER_PROGRAMS")
        .split(',')
        .filter(|n| !n.is_empty())
        .collect()
}

/// Replaces each line holding [`SERVERS_PLACEHOLDER`] with a module line per program
/// (indented as the placeholder was).
pub fn expand_servers(cfg: &str, programs: &[&str]) -> String {
    let mut out = String::new();
    for line in cfg.lines() {
        if let Some(at) = line.find(SERVERS_PLACEHOLDER) {
            let indent = &line[..at];
            for p in programs {
                let _ = writeln!(out, "{indent}module2 /boot/{p} {p}");
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Kernel command-line word by which the runner tells the test image how many CPUs QEMU
/// has (the kernel checks the ACPI MADT against it).
pub const CMDLINE_SMP: &str = "keel.smp";

/// The words the runner adds after the image's base command line: `keel.smp=N` for the
/// test image.
pub fn runner_words(image: Image, smp: u32) -> String {
    match image {
        Image::Test => format!("{CMDLINE_SMP}={smp}"),
        Image::Default | Image::Bench => String::new(),
    }
}

/// The kernel command line of `image`: its base, the runner's words, the user's words.
pub fn kernel_cmdline(image: Image, smp: u32, extra: &str) -> String {
    let (base, runner) = (image.base_cmdline(), runner_words(image, smp));
    let words = [base.as_str(), runner.as_str(), extra];
    words
        .iter()
        .flat_map(|w| w.split_whitespace())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a kernel command line for a GRUB script line: words made only of harmless
/// characters stay as they are, others are put in single quotes (GRUB joins the words
/// with single spaces for multiboot2). A single quote cannot be passed.
pub fn grub_quote(cmdline: &str) -> Result<String, String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._=,:/+-@%^".contains(c);
    let mut words = Vec::new();
    for word in cmdline.split_whitespace() {
        if word.contains('\'') || word.chars().any(|c| c.is_control()) {
            return Err(format!(
                "kernel command line word `{word}` cannot be passed through GRUB"
            ));
        }
        words.push(if word.chars().all(plain) {
            word.to_string()
        } else {
            format!("'{word}'")
        });
    }
    Ok(words.join(" "))
}

/// Renders a template: substitutes the (quoted) command line for the placeholder.
pub fn render(template: &str, cmdline: &str) -> Result<String, String> {
    if !template.contains(CMDLINE_PLACEHOLDER) {
        return Err(format!("template has no {CMDLINE_PLACEHOLDER} placeholder"));
    }
    Ok(template.replace(CMDLINE_PLACEHOLDER, &grub_quote(cmdline)?))
}

/// The files named by `module2 /boot/FILE ...` lines, in order (the first is the root task).
pub fn modules(cfg: &str) -> Vec<String> {
    cfg.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("module2")).then(|| words.next())?
        })
        .filter_map(|path| path.strip_prefix("/boot/").map(str::to_string))
        .collect()
}

/// FNV-1a, to name ISO variants with an extra command line (stable across builds).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The name of the ISO and staging directory: the image name, `-smpN` for the test image
/// (whose command line holds `keel.smp=N`), and a hash of the user's extra command line
/// when there is one, so that runs with different command lines can boot at the same time.
pub fn variant_name(image: Image, smp: u32, extra_cmdline: &str) -> String {
    let mut name = image.name().to_string();
    if !runner_words(image, smp).is_empty() {
        name.push_str(&format!("-smp{smp}"));
    }
    let extra = extra_cmdline
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if !extra.is_empty() {
        name.push_str(&format!("-{:08x}", fnv1a(&extra) as u32));
    }
    name
}

/// One line per input file: path, size and modification time.
fn stamp_of(files: &[PathBuf], cfg: &str) -> Result<String, String> {
    let mut stamp = String::new();
    for file in files {
        let meta = fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(
            stamp,
            "{} {} {}",
            file.display(),
            meta.len(),
            mtime.as_nanos()
        );
    }
    stamp.push_str(cfg);
    Ok(stamp)
}

/// Builds (or finds up to date) the ISO of `image` for `smp` CPUs with `extra_cmdline`;
/// returns its path.
pub fn build_iso(
    paths: &Paths,
    image: Image,
    smp: u32,
    extra_cmdline: &str,
) -> Result<PathBuf, String> {
    let template_path = paths
        .root
        .join("grub")
        .join(format!("{}.cfg", image.name()));
    let template = fs::read_to_string(&template_path)
        .map_err(|e| format!("cannot read {}: {e}", paths.show(&template_path)))?;
    let cfg = render(&template, &kernel_cmdline(image, smp, extra_cmdline))
        .map_err(|e| format!("{}: {e}", paths.show(&template_path)))?;
    let cfg = expand_servers(&cfg, &server_programs());
    let module_names = modules(&cfg);
    if module_names.first().map(String::as_str) != Some(image.root_task()) {
        return Err(format!(
            "{}: the first module2 must be the root task /boot/{}",
            paths.show(&template_path),
            image.root_task()
        ));
    }

    if !paths.kernel_elf.is_file() {
        return Err(format!(
            "kernel ELF {} not found: build it with `cargo build` (without KEEL_SKIP_TARGET_BUILD)",
            paths.kernel_elf.display()
        ));
    }
    let mut inputs = vec![paths.kernel_elf.clone()];
    for name in &module_names {
        let file = paths.userland_dir.join(name);
        if !file.is_file() {
            return Err(format!(
                "module {} not found: build it with `cargo build`",
                file.display()
            ));
        }
        inputs.push(file);
    }

    let name = variant_name(image, smp, extra_cmdline);
    let iso = paths.out_dir.join(format!("{name}.iso"));
    let stamp_path = paths.out_dir.join(format!("{name}.iso.stamp"));
    let iso_dir = paths.out_dir.join("iso");
    fs::create_dir_all(&iso_dir)
        .map_err(|e| format!("cannot create {}: {e}", iso_dir.display()))?;
    let lock_path = iso_dir.join(format!("{name}.lock"));
    let lock = fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;

    let stamp = stamp_of(&inputs, &cfg)?;
    if iso.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        eprintln!("keel: ISO {} is up to date", paths.show(&iso));
        return Ok(iso);
    }

    let started = Instant::now();
    eprintln!("keel: building ISO {}", paths.show(&iso));
    let staging = iso_dir.join(&name);
    let io =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| io("remove", &staging, e))?;
    }
    let grub_dir = staging.join("boot/grub");
    fs::create_dir_all(&grub_dir).map_err(|e| io("create", &grub_dir, e))?;
    let boot = staging.join("boot");
    fs::copy(&paths.kernel_elf, boot.join("keel-kernel"))
        .map_err(|e| io("copy", &paths.kernel_elf, e))?;
    for (name, file) in module_names.iter().zip(&inputs[1..]) {
        fs::copy(file, boot.join(name)).map_err(|e| io("copy", file, e))?;
    }
    fs::write(grub_dir.join("grub.cfg"), &cfg).map_err(|e| io("write", &grub_dir, e))?;

    let tmp = paths.out_dir.join(format!("{name}.iso.tmp"));
    let output = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&tmp)
        .arg(&staging)
        .output()
        .map_err(|e| format!("cannot run grub-mkrescue: {e}"))?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "grub-mkrescue failed ({}); its output is above",
            output.status
        ));
    }
    fs::rename(&tmp, &iso).map_err(|e| io("rename to", &iso, e))?;
    fs::write(&stamp_path, &stamp).map_err(|e| io("write", &stamp_path, e))?;
    eprintln!(
        "keel: built ISO {} in {:.1} s",
        paths.show(&iso),
        started.elapsed().as_secs_f64()
    );
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: Image) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("grub")
            .join(format!("{}.cfg", image.name()));
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn command_lines() {
        assert_eq!(kernel_cmdline(Image::Default, 2, ""), "log=info");
        let test = kernel_cmdline(Image::Test, 4, "  keel.test_fail ");
        assert_eq!(test, "log=info keel.test keel.smp=4 keel.test_fail");
        let bench = kernel_cmdline(Image::Bench, 1, "a  b");
        assert_eq!(bench, "log=warn keel.bench a b");
    }

    #[test]
    fn quoting() {
        assert_eq!(
            grub_quote("log=info keel.test").unwrap(),
            "log=info keel.test"
        );
        assert_eq!(grub_quote("a;b $x").unwrap(), "'a;b' '$x'");
        assert!(grub_quote("it's").is_err());
    }

    #[test]
    fn templates_render_with_root_task_first() {
        for image in [Image::Default, Image::Test, Image::Bench] {
            let cfg = render(&template(image), &kernel_cmdline(image, 1, "x=1")).unwrap();
            assert!(cfg.contains("set timeout=0"), "{cfg}");
            let expected = format!(
                "multiboot2 /boot/keel-kernel {} x=1\n",
                kernel_cmdline(image, 1, "")
            );
            assert!(cfg.contains(&expected), "{cfg}");
            assert_eq!(
                modules(&cfg).first().map(String::as_str),
                Some(image.root_task())
            );
            assert!(!cfg.contains(CMDLINE_PLACEHOLDER));
            let at = |line: &str| {
                cfg.find(&format!("\n    {line}"))
                    .unwrap_or_else(|| panic!("{line}: {cfg}"))
            };
            assert!(
                at("multiboot2 ") < at("module2 ") && at("module2 ") < at("boot\n"),
                "{cfg}"
            );
        }
    }

    #[test]
    fn server_module_lines() {
        let cfg = "a\n    @SERVERS@\nb\n";
        assert_eq!(
            expand_servers(cfg, &["echo", "names"]),
            "a\n    module2 /boot/echo echo\n    module2 /boot/names names\nb\n"
        );
        assert!(server_programs().contains(&"echo"));
    }

    #[test]
    fn render_needs_placeholder() {
        assert!(render("multiboot2 /boot/keel-kernel\n", "x").is_err());
    }

    #[test]
    fn module_lines() {
        let cfg = "  module2 /boot/a a\nmodule2 /boot/b b\n# module2 /boot/c\nmodule2 /other/d\n";
        assert_eq!(modules(cfg), ["a", "b"]);
    }

    #[test]
    fn variants() {
        assert_eq!(variant_name(Image::Default, 4, " "), "default");
        assert_eq!(variant_name(Image::Test, 4, " "), "test-smp4");
        let a = variant_name(Image::Test, 2, "keel.test_fail");
        assert!(a.starts_with("test-smp2-") && a.len() == 18, "{a}");
        assert_eq!(a, variant_name(Image::Test, 2, " keel.test_fail"));
        assert_ne!(a, variant_name(Image::Test, 2, "keel.test_fails"));
        assert_eq!(variant_name(Image::Bench, 1, "x").len(), "bench-".len() + 8);
    }
}
