use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

/// One sample line of the exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the text format, so the tests check what a scraper would see (including
/// label escaping), not substrings.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    assert!(
        text.ends_with("# EOF\n"),
        "exposition must end with # EOF:\n{text}"
    );
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("sample without a value: {line:?}"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            loop {
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "in {line:?}");
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        rest = &body[i + 1..];
                        break;
                    }
                    other => panic!("unexpected {other:?} in {line:?}"),
                }
            }
        }
        let value = rest
            .trim()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the one sample with this name and exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == wanted)
        .collect();
    assert!(found.len() <= 1, "duplicate samples {name} {labels:?}");
    found.first().map(|s| s.value)
}

fn names(samples: &[Sample], name: &str) -> Vec<BTreeMap<String, String>> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.labels.clone())
        .collect()
}

#[test]
fn metrics_are_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Metrics>();
}

#[test]
fn a_fresh_registry_has_build_info_and_zeroed_activities() {
    let samples = parse(&Metrics::new().encode());
    assert_eq!(
        value(
            &samples,
            "fim_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    for activity in [
        "create",
        "update",
        "delete",
        "rename",
        "set_attributes",
        "set_security",
        "other",
    ] {
        assert_eq!(
            value(&samples, "fim_events_total", &[("activity", activity)]),
            Some(0.0),
            "{activity}"
        );
    }
    let start = value(&samples, "fim_start_time_seconds", &[]).expect("start time");
    assert!(start > 1.6e9, "start time {start}");
    assert_eq!(value(&samples, "fim_baseline_files", &[]), Some(0.0));
    // No backend is reported before the sensor starts.
    assert!(names(&samples, "fim_sensor_info").is_empty());
}

#[test]
fn changes_count_by_activity_and_group() {
    let metrics = Metrics::new();
    for _ in 0..3 {
        metrics.change(activity::CREATE, Some("config"));
    }
    metrics.change(activity::RENAME, Some("ssh"));
    metrics.change(activity::SET_SECURITY, None);
    // Ids outside the contract (2 is OCSF "Read") are counted as other, not dropped.
    metrics.change(2, Some("config"));
    let samples = parse(&metrics.encode());
    let events = |a| value(&samples, "fim_events_total", &[("activity", a)]);
    assert_eq!(events("create"), Some(3.0));
    assert_eq!(events("rename"), Some(1.0));
    assert_eq!(events("set_security"), Some(1.0));
    assert_eq!(events("other"), Some(1.0));
    assert_eq!(events("update"), Some(0.0));
    let changes = |g| value(&samples, "fim_changes_total", &[("group", g)]);
    assert_eq!(changes("config"), Some(4.0));
    assert_eq!(changes("ssh"), Some(1.0));
    assert_eq!(names(&samples, "fim_changes_total").len(), 2);
}

#[test]
fn groups_beyond_the_cap_fold_into_other() {
    let metrics = Metrics::new();
    for i in 0..MAX_GROUPS + 10 {
        metrics.change(activity::UPDATE, Some(&format!("g{i}")));
    }
    // A group admitted before the cap keeps its own series.
    metrics.change(activity::UPDATE, Some("g0"));
    let samples = parse(&metrics.encode());
    let groups = names(&samples, "fim_changes_total");
    assert_eq!(groups.len(), MAX_GROUPS + 1, "{groups:?}");
    assert_eq!(
        value(&samples, "fim_changes_total", &[("group", "other")]),
        Some(10.0)
    );
    assert_eq!(
        value(&samples, "fim_changes_total", &[("group", "g0")]),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "fim_changes_total", &[("group", "g64")]),
        None
    );
}

#[test]
fn hostile_group_names_are_escaped() {
    let metrics = Metrics::new();
    let group = "a\"b\\c\nd} x=\"1";
    metrics.change(activity::UPDATE, Some(group));
    let samples = parse(&metrics.encode());
    assert_eq!(
        value(&samples, "fim_changes_total", &[("group", group)]),
        Some(1.0)
    );
}

#[test]
fn lost_events_follow_the_kernel_total() {
    let metrics = Metrics::new();
    metrics.sensor("tracepoint");
    let lost = |m: &Metrics| {
        value(
            &parse(&m.encode()),
            "fim_kernel_events_lost_total",
            &[("backend", "tracepoint")],
        )
    };
    assert_eq!(lost(&metrics), Some(0.0));
    metrics.set_lost("tracepoint", 5);
    metrics.set_lost("tracepoint", 5);
    metrics.set_lost("tracepoint", 12);
    assert_eq!(lost(&metrics), Some(12.0));
    // A reloaded sensor counts from zero again: its total adds, the counter never goes down.
    metrics.set_lost("tracepoint", 3);
    assert_eq!(lost(&metrics), Some(15.0));
}

#[test]
fn sensor_info_names_only_the_running_backend() {
    let metrics = Metrics::new();
    metrics.sensor("lsm");
    metrics.sensor("tracepoint");
    metrics.kernel_records("tracepoint", 7);
    metrics.kernel_records("tracepoint", 3);
    let samples = parse(&metrics.encode());
    assert_eq!(
        names(&samples, "fim_sensor_info"),
        vec![BTreeMap::from([(
            "backend".to_string(),
            "tracepoint".to_string()
        )])]
    );
    assert_eq!(
        value(&samples, "fim_sensor_info", &[("backend", "tracepoint")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "fim_kernel_records_total",
            &[("backend", "tracepoint")]
        ),
        Some(10.0)
    );
}

#[test]
fn hashing_and_latency_fill_histograms() {
    let metrics = Metrics::new();
    metrics.hashed(1000, Duration::from_micros(300));
    metrics.hashed(24, Duration::from_secs(2));
    metrics.latency(Duration::from_millis(20));
    let samples = parse(&metrics.encode());
    assert_eq!(value(&samples, "fim_hash_bytes_total", &[]), Some(1024.0));
    assert_eq!(
        value(&samples, "fim_hash_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "fim_hash_duration_seconds_bucket",
            &[("le", "0.0005")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "fim_hash_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(2.0)
    );
    let sum = value(&samples, "fim_hash_duration_seconds_sum", &[]).expect("sum");
    assert!((sum - 2.0003).abs() < 1e-9, "{sum}");
    assert_eq!(
        value(
            &samples,
            "fim_event_latency_seconds_bucket",
            &[("le", "0.01")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "fim_event_latency_seconds_bucket",
            &[("le", "0.025")]
        ),
        Some(1.0)
    );
}

#[test]
fn gauges_and_error_counters() {
    let metrics = Metrics::new();
    metrics.set_baseline_files(42);
    metrics.set_queue_depth(7);
    metrics.set_queue_depth(3);
    metrics.rescan();
    metrics.malformed(2);
    metrics.output_error();
    metrics.store_error();
    metrics.set_store_totals(4, 10, 99);
    metrics.set_store_totals(6, 10, 5);
    metrics.set_baseline_files(u64::MAX);
    let samples = parse(&metrics.encode());
    let v = |name| value(&samples, name, &[]);
    assert_eq!(v("fim_baseline_files"), Some(i64::MAX as f64));
    assert_eq!(v("fim_queue_depth"), Some(3.0));
    assert_eq!(v("fim_rescans_total"), Some(1.0));
    assert_eq!(v("fim_malformed_records_total"), Some(2.0));
    assert_eq!(v("fim_output_errors_total"), Some(1.0));
    assert_eq!(v("fim_store_errors_total"), Some(7.0));
    assert_eq!(v("fim_store_dropped_total"), Some(10.0));
    assert_eq!(v("fim_store_pending_rows"), Some(5.0));
}

#[test]
fn every_metric_has_the_fim_prefix() {
    let metrics = Metrics::new();
    metrics.sensor("lsm");
    metrics.change(activity::CREATE, Some("g"));
    for sample in parse(&metrics.encode()) {
        assert!(sample.name.starts_with("fim_"), "{}", sample.name);
        for key in sample.labels.keys() {
            assert!(
                ["activity", "group", "backend", "version", "le", "kind"].contains(&key.as_str()),
                "unexpected label {key} on {}",
                sample.name
            );
        }
    }
}

#[test]
fn scans_are_counted_by_kind_with_a_bounded_label() {
    let metrics = Metrics::new();
    let samples = parse(&metrics.encode());
    for kind in SCAN_KINDS {
        // Every kind is there from the start, at 0.
        assert_eq!(
            value(&samples, "fim_scan_drift_total", &[("kind", kind)]),
            Some(0.0)
        );
        assert_eq!(
            value(&samples, "fim_scan_duration_seconds", &[("kind", kind)]),
            Some(0.0)
        );
    }
    assert_eq!(
        value(&samples, "fim_scan_next_timestamp_seconds", &[]),
        Some(0.0)
    );
    metrics.scan_finished("scheduled", Duration::from_millis(1500), 2);
    metrics.scan_finished("scheduled", Duration::from_millis(2500), 1);
    metrics.scan_finished("start", Duration::from_secs(4), 0);
    // Anything else is a targeted rescan: the label stays bounded.
    metrics.scan_finished("directory moved in", Duration::from_secs(1), 5);
    metrics.set_next_scan(Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let samples = parse(&metrics.encode());
    let drift = |kind| value(&samples, "fim_scan_drift_total", &[("kind", kind)]);
    let took = |kind| value(&samples, "fim_scan_duration_seconds", &[("kind", kind)]);
    assert_eq!(drift("scheduled"), Some(3.0));
    assert_eq!(took("scheduled"), Some(2.5));
    assert_eq!(took("start"), Some(4.0));
    assert_eq!(drift("targeted"), Some(5.0));
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "fim_scan_drift_total")
            .count(),
        SCAN_KINDS.len()
    );
    assert_eq!(
        value(&samples, "fim_scan_next_timestamp_seconds", &[]),
        Some(1_800_000_000.0)
    );
    metrics.set_next_scan(None);
    let samples = parse(&metrics.encode());
    assert_eq!(
        value(&samples, "fim_scan_next_timestamp_seconds", &[]),
        Some(0.0)
    );
}
