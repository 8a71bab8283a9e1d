//! What a schedule was: per-job outcomes, the run intervals, the averages; printed as a table,
//! as JSON, or drawn as an SVG Gantt chart.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::jobs::Capacity;

/// One job's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The job's id.
    pub id: usize,
    /// Its name.
    pub name: String,
    /// Arrival, ms.
    pub arrival_ms: u64,
    /// The time it actually ran, ms (the burst in simulation).
    pub burst_ms: u64,
    /// When it first ran.
    pub start_ms: Option<u64>,
    /// When it ended (None when it failed or never ended).
    pub finish_ms: Option<u64>,
    /// Turnaround less the run time: time spent arrived but not running.
    pub waiting_ms: Option<u64>,
    /// Finish less arrival.
    pub turnaround_ms: Option<u64>,
    /// Start less arrival.
    pub response_ms: Option<u64>,
    /// How many times it was stopped before it ended.
    pub preemptions: u64,
    /// How many of those stops saved it to disk to free its memory.
    pub hibernations: u64,
    /// Whether it failed (its VM died, or it was never scheduled).
    pub failed: bool,
}

impl JobOutcome {
    /// Fills waiting, turnaround and response from arrival, burst, start and finish.
    pub fn derive_times(&mut self) {
        self.response_ms = self.start_ms.map(|s| s.saturating_sub(self.arrival_ms));
        self.turnaround_ms = self.finish_ms.map(|f| f.saturating_sub(self.arrival_ms));
        self.waiting_ms = self.turnaround_ms.map(|t| t.saturating_sub(self.burst_ms));
    }
}

/// One stretch of time a job ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    /// The job's id.
    pub job: usize,
    /// Start, ms.
    pub start_ms: u64,
    /// End, ms.
    pub end_ms: u64,
    /// The CPU slot (chart lane) it ran in: at most host CPUs of them, a job takes one however
    /// many vCPUs it has.
    pub slot: usize,
}

/// Averages over the jobs that completed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    /// Mean waiting time, ms.
    pub waiting_ms: f64,
    /// Mean turnaround, ms.
    pub turnaround_ms: f64,
    /// Mean response time (first run less arrival), ms.
    pub response_ms: f64,
    /// First arrival to last finish, ms.
    pub makespan_ms: u64,
    /// Jobs completed.
    pub completed: usize,
    /// Jobs failed.
    pub failed: usize,
    /// Preemptions, all jobs together.
    pub preemptions: u64,
    /// Hibernations, all jobs together.
    pub hibernations: u64,
}

/// A whole schedule. Its JSON form holds the policy, host, jobs and averages (not the
/// intervals, which can be millions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The policy's name.
    pub policy: String,
    /// Its quantum, if any.
    pub quantum_ms: Option<u64>,
    /// The host.
    pub capacity: Capacity,
    /// Per job, by id.
    pub jobs: Vec<JobOutcome>,
    /// When each job ran.
    #[serde(skip)]
    pub intervals: Vec<Interval>,
    /// The averages.
    pub averages: Averages,
    /// Policy decisions made.
    pub decisions: u64,
}

impl Schedule {
    /// Builds a schedule and computes its averages.
    pub fn new(
        policy: &str,
        quantum_ms: Option<u64>,
        capacity: Capacity,
        jobs: Vec<JobOutcome>,
        intervals: Vec<Interval>,
        decisions: u64,
    ) -> Schedule {
        let averages = averages(&jobs);
        Schedule {
            policy: policy.to_string(),
            quantum_ms,
            capacity,
            jobs,
            intervals,
            averages,
            decisions,
        }
    }

    /// The per-job table and the averages, as text.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.heading());
        let width = self
            .jobs
            .iter()
            .map(|j| j.name.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(3, 32);
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>11}",
            "job", "arrival", "start", "finish", "waiting", "turnaround", "preemptions"
        );
        let cell = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        for job in &self.jobs {
            let name: String = job.name.chars().take(width).collect();
            let mut preempt = job.preemptions.to_string();
            if job.hibernations > 0 {
                let _ = write!(preempt, " ({}h)", job.hibernations);
            }
            if job.failed {
                preempt.push_str(" FAILED");
            }
            let _ = writeln!(
                out,
                "{name:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>11}",
                job.arrival_ms,
                cell(job.start_ms),
                cell(job.finish_ms),
                cell(job.waiting_ms),
                cell(job.turnaround_ms),
                preempt
            );
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// One line: policy, host.
    pub fn heading(&self) -> String {
        let quantum = self
            .quantum_ms
            .map_or_else(String::new, |q| format!(" (quantum {q} ms)"));
        let memory = if self.capacity.memory_bytes == u64::MAX {
            "unlimited memory".to_string()
        } else {
            format!("{} memory", vmm_api::MemorySize(self.capacity.memory_bytes))
        };
        format!(
            "policy {}{quantum}, host {} CPU(s), {memory}",
            self.policy, self.capacity.cpus
        )
    }

    /// The averages, as one line.
    pub fn summary(&self) -> String {
        let a = &self.averages;
        let mut line = format!(
            "{}: average waiting {:.2} ms, turnaround {:.2} ms, response {:.2} ms; makespan {} ms; {} completed, {} preemptions",
            self.policy, a.waiting_ms, a.turnaround_ms, a.response_ms, a.makespan_ms, a.completed, a.preemptions
        );
        if a.hibernations > 0 {
            let _ = write!(line, " ({} hibernations)", a.hibernations);
        }
        if a.failed > 0 {
            let _ = write!(line, ", {} FAILED", a.failed);
        }
        line
    }

    /// The JSON report (pretty-printed): policy, host, each job's times, the averages.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn averages(jobs: &[JobOutcome]) -> Averages {
    let mut a = Averages::default();
    let (mut waiting, mut turnaround, mut response) = (0u128, 0u128, 0u128);
    let mut first_arrival = u64::MAX;
    let mut last_finish = 0;
    for job in jobs {
        a.preemptions += job.preemptions;
        a.hibernations += job.hibernations;
        first_arrival = first_arrival.min(job.arrival_ms);
        match (job.failed, job.finish_ms) {
            (false, Some(finish)) => {
                a.completed += 1;
                last_finish = last_finish.max(finish);
                waiting += u128::from(job.waiting_ms.unwrap_or(0));
                turnaround += u128::from(job.turnaround_ms.unwrap_or(0));
                response += u128::from(job.response_ms.unwrap_or(0));
            }
            _ => a.failed += 1,
        }
    }
    if a.completed > 0 {
        let n = a.completed as f64;
        a.waiting_ms = waiting as f64 / n;
        a.turnaround_ms = turnaround as f64 / n;
        a.response_ms = response as f64 / n;
        a.makespan_ms = last_finish.saturating_sub(first_arrival);
    }
    a
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `target` ticks over `span`.
fn tick_step(span: u64, target: u64) -> u64 {
    let raw = (span / target.max(1)).max(1);
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= raw {
                return step.saturating_mul(m);
            }
        }
        if step > u64::MAX / 10 {
            return u64::MAX;
        }
        step *= 10;
    }
}

fn time_label(ms: u64, step: u64) -> String {
    if step >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if step >= 100 && ms >= 1000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// Jobs up to this many get a row each; more are drawn one row per CPU slot.
const MAX_JOB_ROWS: usize = 60;

/// Draws the schedule as an SVG Gantt chart: one row per job (with its name, a mark at its
/// arrival and the bars when it ran) when there are few jobs, else one row per CPU slot with
/// the bars labelled by job; a time axis with ticks and grid lines; one color per job; each
/// bar's tooltip gives the job and the times. Every interval is one `<rect class="run">`.
pub fn gantt_svg(schedule: &Schedule) -> String {
    let per_job = schedule.jobs.len() <= MAX_JOB_ROWS;
    let slots = schedule
        .intervals
        .iter()
        .map(|i| i.slot + 1)
        .max()
        .unwrap_or(1);
    let rows = if per_job {
        schedule.jobs.len().max(1)
    } else {
        slots
    };
    let row_h: u64 = if per_job { 22 } else { 34 };
    let label_w: u64 = 150;
    let plot_w: u64 = 1000;
    let top: u64 = 56;
    let plot_h = rows as u64 * row_h;
    let width = label_w + plot_w + 30;
    let height = top + plot_h + 40;
    let first = schedule
        .jobs
        .iter()
        .map(|j| j.arrival_ms)
        .chain(schedule.intervals.iter().map(|i| i.start_ms))
        .min()
        .unwrap_or(0);
    let last = schedule
        .intervals
        .iter()
        .map(|i| i.end_ms)
        .chain(schedule.jobs.iter().filter_map(|j| j.finish_ms))
        .max()
        .unwrap_or(first)
        .max(first + 1);
    let span = last - first;
    let x =
        |t: u64| label_w as f64 + (t.saturating_sub(first)) as f64 * plot_w as f64 / span as f64;
    let index_of: std::collections::HashMap<usize, usize> = schedule
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id, i))
        .collect();
    let color = |id: usize| format!("hsl({:.0},65%,55%)", (id as f64 * 137.508) % 360.0);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<style>.run{{stroke:#333;stroke-width:0.5}} .grid{{stroke:#ddd}} .axis{{stroke:#333}} .lbl{{fill:#222}}</style>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(&schedule.heading())
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="40" class="lbl">{}</text>"#,
        escape(&schedule.summary())
    );
    // Time axis: grid lines and tick labels.
    let step = tick_step(span, 10);
    let mut tick = first.div_ceil(step).saturating_mul(step);
    let axis_y = top + plot_h;
    while tick <= last {
        let tx = x(tick);
        let _ = writeln!(
            svg,
            r#"<line class="grid" x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{axis_y}"/><line class="axis" x1="{tx:.1}" y1="{axis_y}" x2="{tx:.1}" y2="{}"/><text x="{tx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            axis_y + 5,
            axis_y + 18,
            time_label(tick, step)
        );
        match tick.checked_add(step) {
            Some(next) => tick = next,
            None => break,
        }
    }
    let _ = writeln!(
        svg,
        r#"<line class="axis" x1="{label_w}" y1="{axis_y}" x2="{}" y2="{axis_y}"/><text x="{}" y="{}" text-anchor="end">time</text>"#,
        label_w + plot_w,
        label_w + plot_w,
        axis_y + 34
    );
    // Row labels (and arrival marks for per-job rows).
    for row in 0..rows {
        let y = top + row as u64 * row_h;
        let (label, arrival) = if per_job {
            match schedule.jobs.get(row) {
                Some(j) => (
                    j.name.chars().take(20).collect::<String>(),
                    Some(j.arrival_ms),
                ),
                None => (String::new(), None),
            }
        } else {
            (format!("CPU slot {row}"), None)
        };
        let _ = writeln!(
            svg,
            r#"<text class="lbl" x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8,
            y + row_h / 2 + 4,
            escape(&label)
        );
        if let Some(arrival) = arrival {
            let ax = x(arrival);
            let _ = writeln!(
                svg,
                r##"<path d="M{ax:.1} {} l-4 -6 h8 z" fill="#555"><title>arrival {arrival} ms</title></path>"##,
                y + row_h - 3
            );
        }
    }
    // The bars.
    for interval in &schedule.intervals {
        let job = index_of
            .get(&interval.job)
            .and_then(|&i| schedule.jobs.get(i));
        let name = job.map_or_else(|| format!("job {}", interval.job), |j| j.name.clone());
        let row = if per_job {
            index_of.get(&interval.job).copied().unwrap_or(0)
        } else {
            interval.slot
        };
        let y = top + row as u64 * row_h + 3;
        let x0 = x(interval.start_ms);
        let w = (x(interval.end_ms) - x0).max(0.5);
        let h = row_h - 8;
        let _ = write!(
            svg,
            r#"<rect class="run" x="{x0:.2}" y="{y}" width="{w:.2}" height="{h}" fill="{}"><title>{}: {}–{} ms</title></rect>"#,
            color(interval.job),
            escape(&name),
            interval.start_ms,
            interval.end_ms
        );
        if !per_job && w > 8.0 * name.len() as f64 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"#,
                x0 + w / 2.0,
                y + h / 2 + 4,
                escape(&name)
            );
        }
        svg.push('\n');
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_ticks() {
        assert_eq!(tick_step(100, 10), 10);
        assert_eq!(tick_step(30, 10), 5);
        assert_eq!(tick_step(1, 10), 1);
        assert_eq!(tick_step(25_000, 10), 5000);
        assert_eq!(escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
