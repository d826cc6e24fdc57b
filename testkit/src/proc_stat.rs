//! A process's parent and CPU time, read from `/proc/<pid>/stat`. Linux only:
//! elsewhere there is no `/proc` and nothing is found.

use std::fmt::Display;

/// What `/proc/<pid>/stat` says of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// The parent's PID.
    pub ppid: u32,
    /// User plus system CPU time so far (utime + stime), in seconds.
    pub cpu_seconds: f64,
}

/// The clock ticks `/proc` counts CPU time in (USER_HZ): 100 per second on
/// Linux, whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// The parent and CPU time of process `pid` (a PID, or `"self"` for this
/// process); `None` if there is no such process or its line is not understood.
pub fn proc_stat(pid: impl Display) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // ppid is field 4, utime and stime are fields 14 and 15: the 2nd, 12th and
    // 13th after the name.
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = field(11)? + field(12)?;
    Some(ProcStat {
        ppid,
        cpu_seconds: ticks as f64 / USER_HZ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_by_self_and_by_its_pid_with_its_parent() {
        let by_self = proc_stat("self").expect("/proc/self/stat");
        let by_pid = proc_stat(std::process::id()).expect("/proc/<pid>/stat");
        let parent = std::os::unix::process::parent_id();
        assert_eq!(by_self.ppid, parent);
        assert_eq!(by_pid.ppid, parent);
        // CPU time only grows.
        let later = proc_stat("self").unwrap();
        assert!(by_self.cpu_seconds >= 0.0);
        assert!(later.cpu_seconds >= by_self.cpu_seconds);
    }

    #[test]
    fn a_process_that_does_not_exist_is_not_found() {
        // PIDs are below 2^22 on Linux.
        assert_eq!(proc_stat(u32::MAX), None);
    }
}
