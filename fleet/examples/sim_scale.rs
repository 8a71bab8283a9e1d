//! How the simulator scales: times `simulate` for 10,000, 100,000 and 1,000,000 jobs under each
//! policy on an overloaded host (a job every 2 ms, bursts uniformly 1-40 ms from a seeded
//! generator, estimate = burst, 4 CPUs: about 2.6 times the host's capacity, so the queue grows
//! without end), prints a Markdown table and writes a log-log plot as SVG.
//!
//! ```text
//! cargo run --release -p vmm-fleet --example sim_scale [-- SIZES... [--svg PATH]]
//! ```
//!
//! Default sizes 10000 100000 1000000; default plot `docs/fleet-sim-scaling.svg`.

use std::fmt::Write as _;
use std::time::Instant;

use vmm_fleet::{policy_by_name, simulate, Capacity, Job};

const POLICIES: [(&str, Option<u64>); 4] = [
    ("fcfs", None),
    ("sjf", None),
    ("srtf", None),
    ("rr", Some(4)),
];

/// `count` jobs, one every 2 ms, bursts uniformly 1..=40 ms (xorshift, fixed seed).
fn workload(count: usize) -> Vec<Job> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|id| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let burst = 1 + state % 40;
            Job {
                id,
                name: format!("job{id}"),
                arrival_ms: 2 * id as u64,
                estimate_ms: burst,
                burst_ms: Some(burst),
                priority: 0,
                vcpus: 1,
                memory_bytes: 256 << 20,
                vm: Default::default(),
            }
        })
        .collect()
}

fn main() {
    let mut sizes = Vec::new();
    let mut svg_path = "docs/fleet-sim-scaling.svg".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--svg" {
            svg_path = args.next().expect("--svg PATH");
        } else {
            sizes.push(arg.parse::<usize>().expect("a job count"));
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000, 1_000_000];
    }
    // seconds[policy][size]
    let mut seconds = vec![Vec::new(); POLICIES.len()];
    for &count in &sizes {
        let jobs = workload(count);
        for (p, (name, quantum)) in POLICIES.iter().enumerate() {
            let mut policy = policy_by_name(name, *quantum).expect("policy");
            let start = Instant::now();
            let schedule = simulate(&jobs, policy.as_mut(), Capacity::cpus(4));
            let elapsed = start.elapsed().as_secs_f64();
            assert_eq!(schedule.averages.completed, count);
            eprintln!(
                "{name:>4} {count:>8} jobs: {elapsed:.3} s, {} decisions, mean wait {:.0} ms",
                schedule.decisions, schedule.averages.waiting_ms
            );
            seconds[p].push(elapsed);
        }
    }
    let mut table = String::from("| policy |");
    for &count in &sizes {
        let _ = write!(table, " {count} jobs |");
    }
    table.push_str("\n|---|");
    table.push_str(&"---:|".repeat(sizes.len()));
    table.push('\n');
    for (p, (name, quantum)) in POLICIES.iter().enumerate() {
        let label = match quantum {
            Some(q) => format!("{} (q = {q} ms)", name.to_uppercase()),
            None => name.to_uppercase(),
        };
        let _ = write!(table, "| {label} |");
        for s in &seconds[p] {
            let _ = write!(table, " {} |", human(*s));
        }
        table.push('\n');
    }
    print!("{table}");
    std::fs::write(&svg_path, plot(&sizes, &seconds)).expect("write the SVG");
    eprintln!("wrote {svg_path}");
}

fn human(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// A log-log line plot of seconds against job count, one line per policy.
fn plot(sizes: &[usize], seconds: &[Vec<f64>]) -> String {
    const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let (w, h, left, right, top, bottom) = (640.0, 420.0, 70.0, 120.0, 30.0, 50.0);
    let all = seconds.iter().flatten().copied();
    let lo_t = all
        .clone()
        .fold(f64::MAX, f64::min)
        .max(1e-6)
        .log10()
        .floor();
    let hi_t = all
        .fold(0.0f64, f64::max)
        .max(1e-6)
        .log10()
        .ceil()
        .max(lo_t + 1.0);
    let lo_n = (*sizes.iter().min().unwrap_or(&1) as f64).log10().floor();
    let hi_n = (*sizes.iter().max().unwrap_or(&10) as f64)
        .log10()
        .ceil()
        .max(lo_n + 1.0);
    let x = |n: f64| left + (n.log10() - lo_n) / (hi_n - lo_n) * (w - left - right);
    let y = |t: f64| top + (hi_t - t.max(1e-6).log10()) / (hi_t - lo_t) * (h - top - bottom);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">vmm fleet simulate: \
         time per whole simulation (log-log)</text>\n",
        w / 2.0
    );
    for e in lo_n as i32..=hi_n as i32 {
        let px = x(10f64.powi(e));
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" y1=\"{top}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">1e{e}</text>",
            h - bottom,
            h - bottom + 16.0
        );
    }
    for e in lo_t as i32..=hi_t as i32 {
        let py = y(10f64.powi(e));
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 6.0,
            py + 4.0,
            human(10f64.powi(e))
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">jobs (a job every 2 ms, bursts 1-40 ms, \
         4 CPUs)</text>\n<text x=\"16\" y=\"{}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 16 {})\">seconds</text>",
        (left + w - right) / 2.0,
        h - 12.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    for (p, (name, _)) in POLICIES.iter().enumerate() {
        let points: Vec<String> = sizes
            .iter()
            .zip(&seconds[p])
            .map(|(&n, &t)| format!("{:.1},{:.1}", x(n as f64), y(t)))
            .collect();
        let color = COLORS[p % COLORS.len()];
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            points.join(" ")
        );
        for point in &points {
            let (px, py) = point.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
        let ly = top + 20.0 + 20.0 * p as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" \
             stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0,
            name.to_uppercase()
        );
    }
    svg.push_str("</svg>\n");
    svg
}
