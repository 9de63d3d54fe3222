//! Memory of other processes, from `/proc/PID/status` (Linux).

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
}
