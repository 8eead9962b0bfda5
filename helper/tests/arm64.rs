//! The linux/arm64 `ipmgr-helper` (what the arm64 image ships to Graviton nodes) in an
//! emulated pod: the static aarch64 binary of the cross build runs under qemu user emulation
//! (`qemu-aarch64-static`) in the pod's network namespace, against the AWS stand-in, as the
//! native binary does in `helper.rs`.
//!
//! The binary is `IPMGR_HELPER_BIN_ARM64` (scripts/test builds it with scripts/cross.sh and
//! sets it). Without it, or without `qemu-aarch64-static`, the test is skipped with a note; a
//! failure when `IPMGR_REQUIRE_TOOLS` is set (scripts/test).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::dual_stack_init_twice;

/// ELF `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;

/// Why the arm64 run cannot happen here, or panics when `IPMGR_REQUIRE_TOOLS` is set.
fn skip(note: &str) {
    let note = format!(
        "{note}: run scripts/test as root (scripts/cross.sh installs the cross toolchain and qemu-user-static)"
    );
    assert!(std::env::var_os("IPMGR_REQUIRE_TOOLS").is_none(), "{note}");
    eprintln!("skipped: {note}");
}

/// The arm64 helper and the emulator that runs it, when both are there.
fn arm64_helper() -> Option<(PathBuf, PathBuf)> {
    let Some(binary) = std::env::var_os("IPMGR_HELPER_BIN_ARM64").map(PathBuf::from) else {
        skip("IPMGR_HELPER_BIN_ARM64 is not set (the aarch64 build of ipmgr-helper)");
        return None;
    };
    let qemu = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|directory| directory.join("qemu-aarch64-static"))
            .find(|candidate| candidate.is_file())
    });
    let Some(qemu) = qemu else {
        skip("qemu-aarch64-static not found (Debian qemu-user-static)");
        return None;
    };
    Some((binary, qemu))
}

/// The ELF header's machine and whether the file asks for a program interpreter (a dynamic
/// loader): a static binary has no PT_INTERP segment.
fn elf_machine_and_interpreter(binary: &Path) -> (u16, bool) {
    let bytes =
        std::fs::read(binary).unwrap_or_else(|error| panic!("{}: {error}", binary.display()));
    assert_eq!(
        bytes.get(..4),
        Some(&b"\x7fELF"[..]),
        "{} is not ELF",
        binary.display()
    );
    assert_eq!(bytes[4], 2, "64-bit ELF");
    assert_eq!(bytes[5], 1, "little-endian ELF");
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let machine = u16_at(18);
    let (table, entry_size, entries) = (
        usize::try_from(u64_at(32)).expect("offset"),
        usize::from(u16_at(54)),
        usize::from(u16_at(56)),
    );
    const PT_INTERP: u32 = 3;
    let interpreter = (0..entries).any(|index| u32_at(table + index * entry_size) == PT_INTERP);
    (machine, interpreter)
}

/// `qemu-aarch64-static ipmgr-helper args...` inside `pod`.
fn arm64(
    bed: &ipmgr_testbed::TestBed,
    pod: &ipmgr_testbed::Pod,
    qemu: &Path,
    binary: &Path,
    args: &[&str],
) -> Command {
    let binary = binary.to_str().expect("a UTF-8 path");
    let args: Vec<&str> = [binary].into_iter().chain(args.iter().copied()).collect();
    bed.command(pod, qemu, &args)
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn the_arm64_helper_assigns_a_pods_addresses_under_emulation() {
    let Some((binary, qemu)) = arm64_helper() else {
        return;
    };
    let (machine, interpreter) = elf_machine_and_interpreter(&binary);
    assert_eq!(
        machine,
        EM_AARCH64,
        "{} is not an aarch64 binary",
        binary.display()
    );
    assert!(
        !interpreter,
        "{} is not static: it names a dynamic loader, which scratch images lack",
        binary.display()
    );
    let version = Command::new(&qemu)
        .arg(&binary)
        .arg("--version")
        .output()
        .expect("qemu-aarch64-static runs");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "the arm64 helper is this version: {version:?}"
    );

    // The same pod, calls and second run as the native helper's (helper.rs).
    dual_stack_init_twice(|bed, pod| arm64(bed, pod, &qemu, &binary, &["init"]));
}
