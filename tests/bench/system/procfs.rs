//! What a process costs, read from `/proc`: resident memory, threads and CPU time.

use std::time::Duration;

/// A field of `/proc/<pid>/status` in KiB (or a count, for `Threads`); 0 when unreadable.
pub fn status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Memory of one process at one moment, in MiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: f64,
    pub hwm: f64,
    /// Private memory (heap, stacks): what every further copy of the process costs the node.
    pub anon: f64,
    /// Pages of files (the binary, libc): shared between every copy of the same image.
    pub file: f64,
    pub threads: f64,
}

impl Memory {
    pub fn read(pid: u32) -> Memory {
        let mib = |f: &str| status(pid, f) as f64 / 1024.0;
        Memory {
            rss: mib("VmRSS"),
            hwm: mib("VmHWM"),
            anon: mib("RssAnon"),
            file: mib("RssFile"),
            threads: status(pid, "Threads") as f64,
        }
    }
}

/// User plus system CPU time the process (all its threads) has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name; in clock ticks,
    // which Linux reports at USER_HZ = 100 whatever the kernel's own rate.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Pins every thread of `pid` to `cpu` (threads started later inherit it).
pub fn pin(pid: u32, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        pin_list(pid, &cpu.to_string());
    }
}

/// Pins this process to `cpu` while it starts a server, so the server inherits that one CPU
/// from its first instruction and sizes its runtime for it (std's `available_parallelism`
/// reads the affinity mask, as it reads a pod's CPU quota); [`unpin_self`] undoes it.
pub fn pin_self(cpu: Option<usize>) {
    pin(std::process::id(), cpu);
}

/// Lets this process run on every CPU again.
pub fn unpin_self(cpus: usize) {
    if cpus >= 2 {
        pin_list(std::process::id(), &format!("0-{}", cpus - 1));
    }
}

fn pin_list(pid: u32, list: &str) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-cp", list, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "taskset could not pin {pid} to CPUs {list}"
    );
}
