//! Release builds of the `concord` binary link the functions an agent runs in the order
//! `build/symbol-order.txt` lists them (made by `scripts/symbol-order`), ahead of the rest of
//! `.text`. The kernel maps 64 KiB of code around every page an agent faults in, so with the
//! code it runs packed together an idle agent keeps far fewer pages of the binary resident.
//!
//! Only where the linker is LLD, which reads the file: x86_64 Linux from Rust 1.90 on. Names
//! the file lists that the binary no longer has are skipped quietly.

use std::path::Path;
use std::process::Command;

fn main() {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !release || target != "x86_64-unknown-linux-gnu" || !order.exists() || !lld_by_default() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=concord=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=concord=-Wl,--no-warn-symbol-ordering");
}

/// Whether this rustc links x86_64 Linux binaries with LLD (the default since 1.90).
fn lld_by_default() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&output.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|semver| semver.split('.').nth(1))
        .and_then(|minor| minor.parse::<u32>().ok());
    minor.is_some_and(|minor| minor >= 90)
}
