//! What machine the numbers came from, and per-process memory readings.
//!
//! A benchmark number means little without the machine: CPU model and count, memory, kernel,
//! and how busy the machine was (the load average at the start; other engineers' test runs share
//! these cores). Everything is read from `/proc`, so no tool needs to be installed.
//!
//! [`proc_status_kib`] reads one `/proc/<pid>/status` field (`VmRSS`, `VmHWM`), in KiB, which is
//! what the memory benchmark reports.

use serde::Serialize;

/// The machine a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal, MiB.
    pub mem_total_mib: u64,
    /// The running kernel.
    pub kernel: String,
    /// The 1/5/15-minute load averages when the run started.
    pub loadavg: String,
}

impl Machine {
    /// Reads the machine description.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = field_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024;
        Machine {
            cpus: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1),
            cpu_model,
            mem_total_mib,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            loadavg: read_trim("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// One line for the human report.
    pub fn line(&self) -> String {
        format!(
            "{} CPUs ({}), {} MiB RAM, kernel {}, load {}",
            self.cpus, self.cpu_model, self.mem_total_mib, self.kernel, self.loadavg
        )
    }
}

/// The 1-minute load average now.
pub fn load1() -> f64 {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A `Key:   123 kB` field of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&status, key)
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(field_kib(text, "VmRSS"), Some(1024));
        assert_eq!(field_kib(text, "VmHWM"), Some(2048));
        assert_eq!(field_kib(text, "VmSwap"), None);
        assert!(proc_status_kib(std::process::id(), "VmRSS").is_some());
    }
}
