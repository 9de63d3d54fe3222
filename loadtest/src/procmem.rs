//! Memory and CPU of other processes and of the machine, from `/proc` (Linux).
//!
//! CPU is counted for a watched process *with its descendants* (PostgreSQL's backends are
//! children of the postmaster), in the kernel's `USER_HZ` clock ticks, which Linux fixes at 100
//! a second for everything it exports in `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// A watched process: `NAME=PID`.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

pub fn parse_watch(spec: &str) -> Option<Watched> {
    let (name, pid) = spec.split_once('=')?;
    let pid = pid.trim().parse().ok()?;
    (!name.is_empty()).then(|| Watched {
        name: name.to_owned(),
        pid,
    })
}

/// A `Vm*:` field of a status file, in MiB.
pub fn field_mib(status: &str, field: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Current resident memory (`VmRSS`) or peak (`VmHWM`) of a process, in MiB.
pub fn read_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_mib(&status, field)
}

/// `/proc` reports CPU time in `USER_HZ` ticks: 100 a second on every Linux architecture.
const TICKS_PER_S: f64 = 100.0;

/// One line of the process table: who its parent is and the CPU it has used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcCpu {
    pub pid: u32,
    pub ppid: u32,
    /// user + system time, in ticks.
    pub ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name is in parentheses and may itself hold spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_proc_stat(stat: &str) -> Option<ProcCpu> {
    let pid = stat.split_whitespace().next()?.parse().ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state(3) ppid(4) ... utime(14) stime(15), numbered as in proc(5).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcCpu {
        pid,
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
    })
}

/// A process table indexed by parent, built once per sample for every watched tree.
pub struct ProcTree<'a> {
    by_pid: HashMap<u32, &'a ProcCpu>,
    children: HashMap<u32, Vec<&'a ProcCpu>>,
}

impl<'a> ProcTree<'a> {
    pub fn new(table: &'a [ProcCpu]) -> ProcTree<'a> {
        let mut children: HashMap<u32, Vec<&ProcCpu>> = HashMap::new();
        for p in table {
            children.entry(p.ppid).or_default().push(p);
        }
        let by_pid = table.iter().map(|p| (p.pid, p)).collect();
        ProcTree { by_pid, children }
    }

    /// CPU ticks of `root` and every process below it.
    pub fn ticks(&self, root: u32) -> Option<u64> {
        let mut total = self.by_pid.get(&root)?.ticks;
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            for child in self.children.get(&pid).into_iter().flatten() {
                total += child.ticks;
                stack.push(child.pid);
            }
        }
        Some(total)
    }
}

fn process_table() -> Vec<ProcCpu> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        entry.file_name().to_str()?.parse::<u32>().ok()?;
        parse_proc_stat(&std::fs::read_to_string(entry.path().join("stat")).ok()?)
    })
    .collect()
}

/// The machine's CPU time from the `cpu` line of `/proc/stat`, in ticks summed over all cores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineTicks {
    /// user, nice, system, irq, softirq: work done on this machine.
    pub busy: u64,
    /// time the hypervisor ran something else while this machine had work.
    pub steal: u64,
    /// busy + idle + iowait + steal.
    pub total: u64,
}

pub fn parse_machine(proc_stat: &str) -> Option<MachineTicks> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    Some(MachineTicks {
        busy,
        steal: at(7),
        total: busy + at(3) + at(4) + at(7),
    })
}

/// One interval's CPU use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuShare {
    /// Per watched name, with descendants: percent of one core (200 = two cores busy).
    pub per_process: BTreeMap<String, f64>,
    /// The whole machine busy, percent of all its cores.
    pub machine_busy_pct: Option<f64>,
    /// Stolen by the hypervisor, percent of all cores.
    pub steal_pct: Option<f64>,
}

/// Turns successive readings of `/proc` into CPU shares over the time between them.
#[derive(Debug)]
pub struct CpuSampler {
    watched: Vec<Watched>,
    last_at: Instant,
    last: HashMap<String, u64>,
    last_machine: Option<MachineTicks>,
}

impl CpuSampler {
    pub fn new(watched: Vec<Watched>) -> CpuSampler {
        let mut s = CpuSampler {
            watched,
            last_at: Instant::now(),
            last: HashMap::new(),
            last_machine: None,
        };
        s.sample();
        s
    }

    /// The share of CPU each watched process tree and the machine used since the last call.
    pub fn sample(&mut self) -> CpuShare {
        let now = Instant::now();
        let elapsed_s = now.duration_since(self.last_at).as_secs_f64();
        self.last_at = now;
        let table = process_table();
        let tree = ProcTree::new(&table);
        let mut share = CpuShare::default();
        for w in &self.watched {
            let Some(ticks) = tree.ticks(w.pid) else {
                continue;
            };
            if let Some(before) = self.last.insert(w.name.clone(), ticks)
                && elapsed_s > 0.0
            {
                // A descendant that exited takes its ticks with it: never report below zero.
                let used = ticks.saturating_sub(before) as f64 / TICKS_PER_S;
                share
                    .per_process
                    .insert(w.name.clone(), round1(100.0 * used / elapsed_s));
            }
        }
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_machine(&s));
        if let (Some(m), Some(before)) = (machine, self.last_machine) {
            let total = m.total.saturating_sub(before.total);
            if total > 0 {
                let pct =
                    |a: u64, b: u64| round1(100.0 * a.saturating_sub(b) as f64 / total as f64);
                share.machine_busy_pct = Some(pct(m.busy, before.busy));
                share.steal_pct = Some(pct(m.steal, before.steal));
            }
        }
        self.last_machine = machine.or(self.last_machine);
        share
    }
}

/// One decimal, as every share and mean in the report is given.
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let status = "Name:\tgateway\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(field_mib(status, "VmHWM"), Some(200.0));
        assert_eq!(field_mib(status, "VmRSS"), Some(100.0));
        assert_eq!(field_mib(status, "VmSwap"), None);
        assert_eq!(
            parse_watch("engine=42"),
            Some(Watched {
                name: "engine".into(),
                pid: 42
            })
        );
        assert_eq!(parse_watch("engine"), None);
        assert!(read_mib(std::process::id(), "VmRSS").unwrap() > 0.0);
    }

    #[test]
    fn reads_a_stat_line_whose_name_holds_spaces_and_parentheses() {
        let stat =
            "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(
            parse_proc_stat(stat),
            Some(ProcCpu {
                pid: 4242,
                ppid: 17,
                ticks: 325
            })
        );
        assert_eq!(parse_proc_stat("4242 (cut"), None);
        assert_eq!(parse_proc_stat("4242 (short) S 1 2"), None);
    }

    #[test]
    fn a_tree_counts_every_descendant_and_nothing_else() {
        let p = |pid, ppid, ticks| ProcCpu { pid, ppid, ticks };
        // 10 is the postmaster, 11 and 12 its backends, 13 a grandchild, 20 someone else.
        let table = [
            p(1, 0, 5),
            p(10, 1, 100),
            p(11, 10, 7),
            p(12, 10, 3),
            p(13, 12, 1),
            p(20, 1, 50),
        ];
        let tree = ProcTree::new(&table);
        assert_eq!(tree.ticks(10), Some(111));
        assert_eq!(tree.ticks(12), Some(4));
        assert_eq!(tree.ticks(99), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait_and_steal_is_its_own() {
        let stat = "cpu  100 10 40 800 20 5 5 20 0 0\ncpu0 50 5 20 400 10 2 3 10 0 0\n";
        assert_eq!(
            parse_machine(stat),
            Some(MachineTicks {
                busy: 160,
                steal: 20,
                total: 1000
            })
        );
        assert_eq!(parse_machine("intr 1 2 3\n"), None);
    }

    #[test]
    fn a_busy_loop_shows_as_cpu_of_this_process() {
        let me = Watched {
            name: "me".into(),
            pid: std::process::id(),
        };
        let mut sampler = CpuSampler::new(vec![me]);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let share = sampler.sample();
        // The loop ran for the whole interval; the share is well above zero (not a timing
        // assertion: only that the ticks were counted and attributed to this process).
        assert!(share.per_process["me"] > 0.0, "{share:?}");
        assert!(share.machine_busy_pct.is_some());
    }
}
