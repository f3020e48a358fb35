//! What the machine and its processes report under `/proc`: CPU time of a process and of the
//! whole machine, memory fields, load. The parsers are pure (tested below); a process that is
//! gone reads as `None`.

use std::process::Command;

/// A process id.
pub type Pid = u32;

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: Pid) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU ticks of each process that can be read now.
pub fn ticks_of(pids: &[Pid]) -> Vec<(Pid, u64)> {
    pids.iter().filter_map(|&pid| cpu_ticks(pid).map(|t| (pid, t))).collect()
}

/// CPU ticks the processes of an earlier [`ticks_of`] spent since, summed over those still
/// there (`None` if none is).
pub fn ticks_since(before: &[(Pid, u64)]) -> Option<u64> {
    let spent: Vec<u64> =
        before.iter().filter_map(|&(pid, then)| cpu_ticks(pid).and_then(|now| now.checked_sub(then))).collect();
    (!spent.is_empty()).then(|| spent.iter().sum())
}

/// Bytes a process read through read-type system calls so far (`rchar` of `/proc/<pid>/io`,
/// page-cache hits included): for a walsender, mostly the WAL it decoded.
pub fn read_chars(pid: Pid) -> Option<u64> {
    parse_io_field(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?, "rchar")
}

fn parse_io_field(io: &str, field: &str) -> Option<u64> {
    io.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
}

/// Whether a process exists and is not a zombie (an exited child stays one until reaped).
pub fn running(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_fields(&stat).and_then(|mut f| f.next().map(|state| state != "Z")))
        .unwrap_or(false)
}

/// A kB field of `/proc/<pid>/status` (`VmHWM`, `RssAnon`, …).
pub fn status_kb(pid: Pid, field: &str) -> Option<u64> {
    parse_status_kb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, field)
}

/// Busy CPU ticks of the whole machine (all CPUs) so far.
pub fn machine_busy() -> Option<u64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The load averages (1, 5 and 15 minutes) as `/proc/loadavg` shows them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub fn clock_ticks_per_s() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// The machine: CPUs, their model, RAM and kernel.
#[derive(Clone, Debug)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_kb: u64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
                })
                .unwrap_or_else(|| "unknown".to_owned()),
            mem_kb: parse_status_kb(&meminfo, "MemTotal").unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
        }
    }
}

/// The fields of `/proc/<pid>/stat` from the third (state) on: the command name, in parentheses,
/// may itself hold spaces and parentheses, so the split is after its last `)`.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // utime and stime are fields 14 and 15: the 12th and 13th from the state (field 3)
    let mut fields = stat_fields(stat)?.skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    // cpu  user nice system idle iowait irq softirq steal …: busy = all but idle and iowait
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    let at = |i: usize| values.get(i).copied();
    Some(at(0)? + at(1)? + at(2)? + at(5)? + at(6)? + at(7)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (beam.smp (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 30 0 12345 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(42));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn status_fields_are_read_by_exact_name() {
        let status = "Name:\tpostgres\nVmHWM:\t  123456 kB\nRssAnon:\t    2048 kB\nRssAnonX:\t9 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(123_456));
        assert_eq!(parse_status_kb(status, "RssAnon"), Some(2048));
        assert_eq!(parse_status_kb(status, "RssFile"), None);
        assert_eq!(parse_status_kb("MemTotal:       8000000 kB\n", "MemTotal"), Some(8_000_000));
    }

    #[test]
    fn machine_busy_counts_all_but_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(parse_machine_busy("cpu0 1 2 3\n"), None);
        assert_eq!(parse_machine_busy("cpu  1 x 3 4 5 6 7 8\n"), None);
    }

    #[test]
    fn ticks_since_sums_the_processes_still_there() {
        let me = std::process::id();
        let before = ticks_of(&[me, u32::MAX]);
        assert_eq!(before.len(), 1, "a process that is not there is left out");
        assert!(ticks_since(&before).is_some());
        assert_eq!(ticks_since(&[(u32::MAX, 0)]), None);
        assert_eq!(ticks_since(&[]), None);
    }

    #[test]
    fn this_process_is_running_and_has_cpu_time() {
        assert!(running(std::process::id()));
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(status_kb(std::process::id(), "VmHWM").is_some());
        assert!(!running(u32::MAX));
    }

    #[test]
    fn io_fields_are_read_by_name() {
        let io = "rchar: 123456\nwchar: 42\nsyscr: 7\nread_bytes: 0\n";
        assert_eq!(parse_io_field(io, "rchar"), Some(123_456));
        assert_eq!(parse_io_field(io, "wchar"), Some(42));
        assert_eq!(parse_io_field(io, "cancelled_write_bytes"), None);
        assert_eq!(parse_io_field("rchar: x\n", "rchar"), None);
    }
}
