//! What the helper's benchmarks share: the binary under test, their knobs, and what they
//! read of a running process from /proc.

#![allow(dead_code, reason = "each benchmark uses its own subset")]

use std::path::PathBuf;

/// The helper under test: `IPMGR_HELPER_BIN` when set, else this build's.
pub(crate) fn helper_binary() -> PathBuf {
    ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"))
}

/// The knob `name` from the environment, or `default` when unset or unreadable.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// User plus system CPU time of process `pid`, in clock ticks (10 ms here).
pub(crate) fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Resident set size of process `pid`, in KiB.
pub(crate) fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
