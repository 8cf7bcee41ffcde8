//! `loadgen --report FILE`: a Markdown table of the `RESULT` lines collected by
//! `scripts/bench.sh`, with a `framework/baseline` ratio row per scenario that both ran.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

/// Column headers of the table.
const HEADERS: [&str; 14] = [
    "server",
    "scenario",
    "delivered",
    "lost",
    "dup",
    "reorder",
    "frames/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "server CPU µs/frame",
    "server RSS MiB",
    "KiB/conn",
    "loadgen CPU s",
];

/// The numeric columns that get a ratio: (header index, value extractor).
type Metric = fn(&Value) -> Option<f64>;

fn metrics() -> [(usize, Metric); 8] {
    [
        (6, |v| num(v, &["frames_per_s"])),
        (7, |v| num(v, &["latency_ms", "p50"])),
        (8, |v| num(v, &["latency_ms", "p99"])),
        (9, |v| num(v, &["latency_ms", "p999"])),
        (10, |v| num(v, &["server_cpu_us_per_frame"])),
        (11, |v| rss_kib(v).map(|k| k / 1024.0)),
        (12, |v| num(v, &["kib_per_conn"])),
        (13, |v| num(v, &["loadgen_cpu_s"])),
    ]
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_f64()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("?").to_owned()
}

/// Peak RSS for load runs, RSS with every connection open for idle runs.
fn rss_kib(v: &Value) -> Option<f64> {
    if v.get("mode").and_then(Value::as_str) == Some("idle") {
        num(v, &["server_rss_kib"])
    } else {
        num(v, &["server_rss_peak_kib"])
    }
}

fn fmt(value: Option<f64>) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn int(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map_or_else(|| "—".to_owned(), |n| n.to_string())
}

fn row(v: &Value) -> Vec<String> {
    let idle = v.get("mode").and_then(Value::as_str) == Some("idle");
    let mut cells = vec![text(v, "server"), text(v, "scenario")];
    if idle {
        cells.push(format!(
            "{}/{} conns",
            int(v, "connected"),
            int(v, "clients")
        ));
        cells.extend(["—", "—", "—"].map(str::to_owned));
    } else {
        cells.push(format!("{}/{}", int(v, "delivered"), int(v, "expected")));
        cells.push(int(v, "lost"));
        cells.push(int(v, "duplicated"));
        cells.push(int(v, "out_of_order"));
    }
    for (index, metric) in metrics() {
        debug_assert_eq!(cells.len(), index);
        cells.push(fmt(metric(v)));
    }
    if v.get("loadgen_bottleneck").and_then(Value::as_bool) == Some(true) {
        cells[13].push_str(" ⚠");
    }
    cells
}

fn ratio_row(scenario: &str, framework: &Value, baseline: &Value) -> Vec<String> {
    let mut cells = vec![
        "**framework/baseline**".to_owned(),
        scenario.to_owned(),
        "—".to_owned(),
        "—".to_owned(),
        "—".to_owned(),
        "—".to_owned(),
    ];
    for (_, metric) in metrics() {
        cells.push(match (metric(framework), metric(baseline)) {
            (Some(f), Some(b)) if b != 0.0 => format!("{:.2}×", f / b),
            _ => "—".to_owned(),
        });
    }
    cells
}

/// Renders the table for a file of `RESULT {json}` lines (other lines are ignored).
pub(crate) fn markdown(input: &str) -> Result<String> {
    let mut results = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.trim();
        let Some(json) = line
            .strip_prefix("RESULT ")
            .or_else(|| line.strip_prefix('{').map(|_| line))
        else {
            continue;
        };
        let value: Value =
            serde_json::from_str(json).with_context(|| format!("line {}: not JSON", n + 1))?;
        results.push(value);
    }

    let mut scenarios: Vec<String> = Vec::new();
    for v in &results {
        let s = text(v, "scenario");
        if !scenarios.contains(&s) {
            scenarios.push(s);
        }
    }

    let mut rows = Vec::new();
    for scenario in &scenarios {
        let in_scenario: Vec<&Value> = results
            .iter()
            .filter(|v| text(v, "scenario") == *scenario)
            .collect();
        rows.extend(in_scenario.iter().map(|v| row(v)));
        let by = |name: &str| in_scenario.iter().find(|v| text(v, "server") == name);
        if let (Some(f), Some(b)) = (by("framework"), by("baseline")) {
            rows.push(ratio_row(scenario, f, b));
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADERS.len()));
    for cells in rows {
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_and_ratios() {
        let input = r#"
noise
RESULT {"mode":"fanout","server":"baseline","scenario":"throughput","delivered":10,"expected":10,"lost":0,"duplicated":0,"out_of_order":0,"frames_per_s":1000.0,"latency_ms":{"p50":1.0,"p99":2.0,"p999":3.0},"server_cpu_us_per_frame":2.0,"server_rss_peak_kib":10240,"loadgen_cpu_s":0.5}
RESULT {"mode":"fanout","server":"framework","scenario":"throughput","delivered":10,"expected":10,"lost":0,"duplicated":0,"out_of_order":0,"frames_per_s":500.0,"latency_ms":{"p50":2.0,"p99":4.0,"p999":6.0},"server_cpu_us_per_frame":4.0,"server_rss_peak_kib":20480,"loadgen_cpu_s":0.5,"loadgen_bottleneck":true}
RESULT {"mode":"idle","server":"baseline","scenario":"idle","clients":5,"connected":5,"server_rss_kib":2048,"kib_per_conn":6.5}
"#;
        let table = markdown(input).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 4, "{table}");
        assert!(lines[2].starts_with("| baseline | throughput | 10/10 | 0 | 0 | 0 | 1000 |"));
        assert!(lines[3].contains("0.500 ⚠"), "{}", lines[3]);
        assert!(
            lines[4].contains("0.50×") && lines[4].contains("2.00×"),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].contains("5/5 conns") && lines[5].contains("6.500"),
            "{}",
            lines[5]
        );
    }
}
