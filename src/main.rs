//! `keel`: builds the GRUB ISO of an image and boots it in QEMU (see doc/runner.md).

use clap::Parser;

fn main() -> std::process::ExitCode {
    keel::run::main(keel::cli::Cli::parse())
}
