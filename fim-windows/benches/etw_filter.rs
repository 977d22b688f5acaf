//! The event-rate difference of the session filters, on a fixture:
//! `tests/fixtures/workload_mix.json` replayed as the previous filters
//! (Kernel-File keywords without READ, Kernel-Registry keywords 0, no
//! event-id filter) and as the precise ones (consumed events' keywords and
//! an event-id filter) would deliver it. Prints, per configuration, the
//! events delivered per provider and the median time the pipeline takes to
//! handle them (decode, rules, OCSF), and checks that both produce the same
//! records. Run: `cargo bench -p fim-windows --bench etw_filter`
//! (`-- --runs N`, default 200).

use std::path::Path;
use std::time::Instant;

use fim_windows::etw_event::Provider;
use fim_windows::etw_filter::{self, ProviderFilter, delivered};
use fim_windows::pipeline::{load_fixture, replay_fixture};
use fim_windows::rules::{Config, RuleSet};

fn env(name: &str) -> Option<String> {
    match name.to_ascii_lowercase().as_str() {
        "windir" | "systemroot" => Some(r"C:\Windows".into()),
        "programdata" => Some(r"C:\ProgramData".into()),
        _ => None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map_or(200, |n| n.parse().expect("--runs N"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/workload_mix.json");
    let mut fixture = load_fixture(&path).expect("workload fixture");
    let all = std::mem::take(&mut fixture.events);
    let configs: [(&str, ProviderFilter, ProviderFilter); 2] = [
        (
            "previous",
            etw_filter::PREVIOUS_KERNEL_FILE,
            etw_filter::PREVIOUS_KERNEL_REGISTRY,
        ),
        (
            "precise",
            etw_filter::KERNEL_FILE,
            etw_filter::KERNEL_REGISTRY,
        ),
    ];
    println!(
        "workload_mix.json: {} events; {runs} runs per configuration, medians",
        all.len()
    );
    println!(
        "| filters | Kernel-File events | Kernel-Registry events | total | pipeline time per replay (us) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut results = Vec::new();
    for (label, file, registry) in &configs {
        fixture.events = delivered(&all, file, registry).cloned().collect();
        let count = |p| fixture.events.iter().filter(|e| e.provider == p).count();
        let (files, regs) = (count(Provider::KernelFile), count(Provider::KernelRegistry));
        let mut times = Vec::with_capacity(runs);
        let mut records = Vec::new();
        for _ in 0..runs {
            let rules = RuleSet::compile(&Config::builtin(), &env, None).expect("rules");
            let start = Instant::now();
            records = replay_fixture(&fixture, rules, "bench");
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let time = median(times);
        println!(
            "| {label} | {files} | {regs} | {} | {time:.0} |",
            files + regs
        );
        results.push((files + regs, time, records));
    }
    assert_eq!(
        results[0].2, results[1].2,
        "both filters give the same records"
    );
    println!(
        "\nprecise/previous: {:.3} of the events, {:.3} of the pipeline time ({} records each)",
        results[1].0 as f64 / results[0].0 as f64,
        results[1].1 / results[0].1,
        results[1].2.len()
    );
}
