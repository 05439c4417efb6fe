//! Release builds lay out the program text in the order a sidecar first runs it
//! (`picket-sidecar.order`, written by `bench/text-order`): start-up code first, then the code
//! that carries requests. The kernel maps a binary's text 64 KiB around each page a process
//! touches, so start-up code scattered through the whole text made most of it resident in
//! every fresh sidecar (ARCHITECTURE.md, "Program text order").
//!
//! The same builds pack their relative relocations (`-z pack-relative-relocs`, glibc 2.36's
//! `DT_RELR`): the dynamic loader reads every relocation at start, and in the classic format
//! they were over half a MiB of the binary made resident in every process.
//!
//! Both go to the linker only where it is known to be LLD: release builds for x86_64 Linux with
//! the toolchain's own linker. `PICKET_TEXT_ORDER=off` leaves them out. Packed relocations also
//! need the build machine's C library to be glibc 2.36 or later, since the binary then needs it
//! too. Names the ordering file lists that a build does not have (renamed code, another
//! compiler) are skipped by the linker, so a stale file costs memory, never correctness.

use std::env;
use std::path::Path;

const ORDER: &str = "picket-sidecar.order";

// A build script's inputs are cargo's environment variables; there is no other place to read.
#[allow(clippy::disallowed_methods)]
fn main() {
    println!("cargo::rerun-if-changed={ORDER}");
    for var in [
        "PICKET_TEXT_ORDER",
        "RUSTC_LINKER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("PICKET_TEXT_ORDER") == "off" || var("PROFILE") != "release" {
        return;
    }
    let lld_target = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    // A linker chosen by hand may not be LLD, and other linkers reject the option.
    // `RUSTC_LINKER` is the linker cargo resolved from its configuration or environment.
    let own_linker = var("RUSTC_LINKER").is_empty()
        && var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        && !var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS").contains("linker");
    if !lld_target || !own_linker {
        println!(
            "cargo::warning=program text left in the compiler's order: the ordering file needs \
             the toolchain's own linker (LLD) on x86_64 Linux"
        );
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    println!(
        "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    if glibc_at_least(2, 36) {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the build machine's C library is glibc `major.minor` or later (`getconf
/// GNU_LIBC_VERSION` prints `glibc 2.36`); false when that cannot be told.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
