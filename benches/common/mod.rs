//! Reporting shared by the benchmark binaries: percentiles, the summary table, and the
//! machine facts every run prints first. Each bench includes this file with `#[path]`.

use std::time::Duration;

pub mod agent;
pub mod http;
pub mod process;

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Sorted samples, for nearest-rank percentiles.
pub struct Stats(Vec<f64>);

impl Stats {
    pub fn new(mut samples: Vec<f64>) -> Stats {
        samples.sort_by(f64::total_cmp);
        Stats(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn pct(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = (quantile * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }

    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len().max(1) as f64
    }
}

#[derive(Default)]
pub struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    pub fn row(&mut self, metric: &str, value: String, target: &str, pass: Option<bool>) {
        let verdict = match pass {
            Some(true) => "ok",
            Some(false) => "MISS",
            None => "",
        };
        self.rows
            .push([metric.into(), value, target.into(), verdict.into()]);
    }

    pub fn print(&self) {
        let header = ["metric", "value", "target", ""].map(String::from);
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let line = |row: &[String; 4]| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            println!("| {} |", cells.join(" | "));
        };
        println!("\n== summary ==");
        line(&header);
        let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
        println!("|-{}-|", rule.join("-|-"));
        self.rows.iter().for_each(line);
    }
}

/// Prints the machine facts; `client` and `units` describe the bench's own client and figures.
pub fn print_machine(binary: &str, client: &str, units: &str) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .map(str::trim)
        .unwrap_or("unknown");
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("== machine ==");
    println!("nproc: {cores}");
    println!("model name: {model}");
    println!("MemTotal: {memory}");
    println!("agent TMPDIR parent: {}", std::env::temp_dir().display());
    println!("agent: {binary}");
    println!("{client}, tokio with {cores} workers");
    println!("{units}");
}

/// The sections `CONCORD_BENCH` selects (all of `sections` when unset or `all`), or None when
/// cargo did not pass `--bench` (`cargo test` builds bench targets; they then do no work).
pub fn selected_sections(name: &str, sections: &[&str]) -> anyhow::Result<Option<Vec<String>>> {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/{name}.rs: skipped (run it with `cargo bench --bench {name}`)");
        return Ok(None);
    }
    let selected: Vec<String> = match std::env::var("CONCORD_BENCH") {
        Ok(list) if !list.trim().is_empty() && list.trim() != "all" => list
            .split(',')
            .map(|name| name.trim().to_lowercase())
            .filter(|name| !name.is_empty())
            .collect(),
        _ => sections.iter().map(|name| name.to_string()).collect(),
    };
    if let Some(unknown) = selected
        .iter()
        .find(|name| !sections.contains(&name.as_str()))
    {
        anyhow::bail!("unknown section {unknown:?} in CONCORD_BENCH; known: {sections:?}");
    }
    Ok(Some(selected))
}

/// One section's work: fills its rows of the summary table.
pub type SectionFuture<'t> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 't>>;

/// A bench binary's `main`: the sections `CONCORD_BENCH` selects run in `sections` order on a
/// multi-thread runtime, after `intro` (the machine facts). A failed section becomes a FAILED
/// row and the others still run; the summary table is printed at the end.
pub fn run_sections(
    name: &str,
    sections: &[&str],
    intro: impl FnOnce(),
    mut section: impl for<'t> FnMut(&str, &'t mut Table) -> SectionFuture<'t>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let Some(selected) = selected_sections(name, sections)? else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    runtime.block_on(async {
        intro();
        let mut table = Table::default();
        for name in sections {
            if !selected.iter().any(|chosen| chosen == name) {
                continue;
            }
            println!("\n== {name} ==");
            if let Err(error) = section(name, &mut table).await {
                println!("section {name} failed: {error:#}");
                let first_line = format!("{error:#}")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                table.row(name, format!("FAILED: {first_line}"), "-", Some(false));
            }
        }
        table.print();
        Ok(())
    })
}
