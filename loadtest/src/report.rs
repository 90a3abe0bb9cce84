//! Results: per step and for a whole run (JSON), the final table, and the capacity plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use kws_client::plot::{Chart, Drawn, PlotError, Scale, Series, charts_png};
use serde::{Deserialize, Serialize};

/// Event latency percentiles, ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// The server's resource use over a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub cpu_seconds: f64,
    /// CPU seconds per second of audio processed.
    pub cpu_seconds_per_audio_second: f64,
    /// Average cores busy over the step's wall time.
    pub cpu_cores_avg: f64,
    pub rss_bytes_end: f64,
    pub rss_bytes_peak: f64,
}

/// One step (one stream count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub streams: usize,
    pub duration_s: f64,
    pub ramp_up_s: f64,
    pub chunk_ms: u32,
    /// Streams refused with RESOURCE_EXHAUSTED when opening.
    pub rejected: usize,
    /// Streams that ended with an error, by status code.
    pub errors: BTreeMap<String, u64>,
    pub expected_events: u64,
    /// Expected events that arrived.
    pub received_events: u64,
    pub lost_events: u64,
    /// Events that match no expected one.
    pub unexpected_events: u64,
    pub latency_ms: Option<LatencyMs>,
    pub audio_s_sent: f64,
    /// From the streams' summaries.
    pub audio_s_processed: f64,
    pub wall_s: f64,
    pub throughput_audio_s_per_s: f64,
    /// Streams whose progress said `behind` at least once.
    pub streams_behind: usize,
    /// No stream behind, and every summary covers all the audio sent.
    pub kept_real_time: bool,
    /// Largest delay of a chunk send behind its real-time schedule (client or transport congestion).
    pub max_send_lag_ms: f64,
    /// Largest time from a stream's half-close to its summary.
    pub max_summary_delay_ms: f64,
    pub server: Option<ServerUsage>,
    pub server_probe_error: Option<String>,
    /// CPU used by this load generator during the step.
    pub loadtest_cpu_seconds: Option<f64>,
    pub pass: bool,
    pub fail_reasons: Vec<String>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub addr: String,
    pub model: String,
    /// The streams asked for the first stage's events alone (no verifier).
    #[serde(default)]
    pub first_stage_only: bool,
    pub wavs: Vec<String>,
    pub rates: Vec<u32>,
    /// Expected events per stream, per (wav, rate) variant.
    pub expected_per_stream: Vec<u64>,
    pub budget_ms: f64,
    pub steps: Vec<StepReport>,
    /// `--find-capacity`: the largest passing stream count (None if even the first step failed).
    pub capacity: Option<usize>,
    pub find_capacity: bool,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The final table, one row per step.
pub fn render_table(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:>5} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8}  verdict",
        "streams",
        "rej",
        "err",
        "events",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "audio x",
        "behind",
        "srv cpu",
        "cpu/aud"
    );
    for st in &r.steps {
        let l = st.latency_ms.as_ref();
        let _ = writeln!(
            s,
            "{:>7} {:>5} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9.1} {:>7} {:>8} {:>8}  {}",
            st.streams,
            st.rejected,
            st.errors.values().sum::<u64>(),
            format!("{}/{}", st.received_events, st.expected_events),
            opt(l.map(|l| l.p50)),
            opt(l.map(|l| l.p90)),
            opt(l.map(|l| l.p99)),
            opt(l.map(|l| l.max)),
            st.throughput_audio_s_per_s,
            st.streams_behind,
            st.server
                .as_ref()
                .map_or_else(|| "-".into(), |u| format!("{:.2}", u.cpu_cores_avg)),
            st.server.as_ref().map_or_else(
                || "-".into(),
                |u| format!("{:.4}", u.cpu_seconds_per_audio_second)
            ),
            if st.pass {
                "pass".to_string()
            } else {
                format!("FAIL: {}", st.fail_reasons.join("; "))
            }
        );
    }
    if r.find_capacity {
        match r.capacity {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "capacity: {c} concurrent real-time streams (p99 <= {} ms, no loss, no rejection)",
                    r.budget_ms
                );
            }
            None => {
                let _ = writeln!(s, "capacity: none — the smallest step failed");
            }
        }
    }
    s
}

/// Latency percentiles and server CPU against the stream count (capacity runs).
pub fn capacity_png(path: &Path, r: &RunReport) -> Result<Drawn, PlotError> {
    let mut steps: Vec<&StepReport> = r.steps.iter().filter(|s| s.latency_ms.is_some()).collect();
    steps.sort_by_key(|s| s.streams);
    let line = |name: &str, f: &dyn Fn(&StepReport) -> Option<f64>| Series {
        name: name.to_string(),
        points: steps
            .iter()
            .filter_map(|s| f(s).map(|v| (s.streams as f64, v)))
            .collect(),
    };
    let lat = vec![
        line("p50", &|s| s.latency_ms.as_ref().map(|l| l.p50)),
        line("p90", &|s| s.latency_ms.as_ref().map(|l| l.p90)),
        line("p99", &|s| s.latency_ms.as_ref().map(|l| l.p99)),
        Series {
            name: format!("budget {} ms", r.budget_ms),
            points: steps.iter().map(|s| (s.streams as f64, r.budget_ms)).collect(),
        },
    ];
    let cpu = vec![
        line("server CPU (cores)", &|s| {
            s.server.as_ref().map(|u| u.cpu_cores_avg)
        }),
        line("load generator CPU (cores)", &|s| {
            s.loadtest_cpu_seconds.map(|c| c / s.wall_s.max(1e-9))
        }),
    ];
    let x_max = steps.iter().map(|s| s.streams).max().unwrap_or(1) as f64;
    let y_max = lat
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let c_max = cpu
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.5, f64::max);
    let charts = [
        Chart {
            title: "event latency vs concurrent streams",
            x_label: "concurrent streams",
            y_label: "latency (ms)",
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            x_range: (0.0, x_max * 1.05),
            y_range: (0.0, y_max * 1.1),
            series: &lat,
        },
        Chart {
            title: "CPU vs concurrent streams",
            x_label: "concurrent streams",
            y_label: "cores",
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            x_range: (0.0, x_max * 1.05),
            y_range: (0.0, c_max * 1.15),
            series: &cpu,
        },
    ];
    charts_png(path, &charts, 900, 900)
}
