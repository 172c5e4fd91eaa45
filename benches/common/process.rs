//! What the benches read about processes: /proc figures (VmRSS, threads, CPU ticks), free
//! ports, and summaries of an agent's log.

// Each bench binary compiles this file and uses its own subset of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Linux `CLK_TCK`, the unit of utime/stime in /proc/<pid>/stat (100 on every mainstream kernel).
pub const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A `kB` field (or a plain count such as `Threads`) of /proc/<pid>/status.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Bytes in the files `pid` holds open that have no name any more (concord's KV value
/// files are created unlinked): memory that lives in the page cache, not in VmRSS.
pub fn unlinked_file_bytes(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().ends_with(" (deleted)"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

pub fn stat_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/stat"))
}

/// This bench process's own stat file.
pub fn own_stat_path() -> PathBuf {
    PathBuf::from("/proc/self/stat")
}

/// utime + stime of a process or thread, in clock ticks, from its stat file.
pub fn cpu_ticks(stat_path: &Path) -> u64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    // After "pid (comm)" come the fields from #3 (state); utime and stime are #14 and #15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    field(14) + field(15)
}

/// CPU used by several processes or threads (their stat files) over the same interval.
pub struct CpuMeter {
    started: Instant,
    paths: Vec<PathBuf>,
    ticks: Vec<u64>,
}

impl CpuMeter {
    pub fn start(paths: &[PathBuf]) -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            ticks: paths.iter().map(|path| cpu_ticks(path)).collect(),
            paths: paths.to_vec(),
        }
    }

    /// Cores each one used since `start`, in the order given.
    pub fn finish(self) -> Vec<f64> {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        self.paths
            .iter()
            .zip(self.ticks)
            .map(|(path, before)| {
                cpu_ticks(path).saturating_sub(before) as f64 / CLOCK_TICKS_PER_SEC / seconds
            })
            .collect()
    }
}

/// `n` distinct free ports on 127.0.0.1 (all held at once while choosing).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lines holding one of `markers`, counted, and up to 8 distinct messages (the words after the
/// marker up to the first `key=value` field) with their counts and the first such line whole
/// (cut at 400 characters), whose fields usually say why.
pub fn log_problems(text: &str, markers: &[&str]) -> (usize, String) {
    let mut groups: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    let mut count = 0;
    for line in text.lines() {
        let Some((marker, at)) = markers
            .iter()
            .find_map(|marker| line.find(marker).map(|at| (marker, at)))
        else {
            continue;
        };
        count += 1;
        let rest = &line[at + marker.len()..];
        let message: Vec<&str> = rest
            .split_whitespace()
            .take_while(|word| !word.contains('='))
            .take(16)
            .collect();
        groups
            .entry(format!("{} {}", marker.trim(), message.join(" ")))
            .or_insert((0, line))
            .0 += 1;
    }
    let mut groups: Vec<(String, (usize, &str))> = groups.into_iter().collect();
    groups.sort_by_key(|group| std::cmp::Reverse(group.1 .0));
    let summary: String = groups
        .iter()
        .take(8)
        .map(|(message, (n, first))| {
            let first: String = first.chars().take(400).collect();
            format!("\n  {n} x {message}\n      first: {first}")
        })
        .collect();
    (count, summary)
}
