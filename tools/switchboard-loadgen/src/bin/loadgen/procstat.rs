//! Process statistics from `/proc`: CPU time and resident memory of a process.

use std::fs;

use anyhow::{Context as _, Result};

/// Clock ticks per second of the `utime`/`stime` fields of `/proc/<pid>/stat`.
///
/// Linux exposes these in `USER_HZ`, which is 100 on every architecture the kernel's ABI
/// promises to user space (`sysconf(_SC_CLK_TCK)` returns the same constant), so the value is
/// not queried at run time (which would need `unsafe` FFI).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Which process to read: this one or another by pid.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Proc {
    /// `/proc/self`.
    SelfProc,
    /// `/proc/<pid>`.
    Pid(u32),
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::SelfProc => format!("/proc/self/{file}"),
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// User + system CPU seconds used so far by all threads of the process.
    pub(crate) fn cpu_seconds(self) -> Result<f64> {
        let path = self.path("stat");
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_cpu_seconds(&stat).with_context(|| format!("parsing {path}"))
    }

    /// A memory line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...) in KiB.
    pub(crate) fn status_kib(self, key: &str) -> Result<u64> {
        let path = self.path("status");
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_status_kib(&status, key).with_context(|| format!("no {key} in {path}"))
    }
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself:
    // the fields that follow start after the LAST ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_SEC)
}

/// The value in KiB of a `Key:   1234 kB` line.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    3 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tserver\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(Proc::SelfProc.cpu_seconds().is_ok());
        assert!(Proc::SelfProc.status_kib("VmRSS").unwrap() > 0);
    }
}
