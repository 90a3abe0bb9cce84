//! kws-loadtest: how many concurrent real-time streams one kws-service box holds.
//!
//! Open-loop load like Triton's perf_analyzer and ghz: N streams each send a WAV from the pool (looped,
//! real-time paced, 20 ms chunks by default) without waiting for responses, with a ramp-up and a fixed
//! duration; the receiving halves match keyword events to the events the pool is known to hold and
//! record their latency in an HDR histogram. `--find-capacity` steps N up, then bisects, to the
//! largest N whose p99 latency stays under the budget with no lost events, no rejection and no
//! stream falling behind real time.
//!
//! # Layout
//! - [`pool`]: the WAV pool, resampled and looped per stream rate; expected events (calibration).
//! - [`run`]: one step: N streams, live counters, aggregation.
//! - [`server`]: server CPU/RSS from its Prometheus endpoint or `/proc/<pid>`.
//! - [`report`]: step and run reports (JSON), the final table, the capacity PNG.
//!
//! Loopback only: [`check_loopback`] refuses any other target.

pub mod pool;
pub mod report;
pub mod run;
pub mod server;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kws_client::{BearerToken, Client, ConnectOptions};

pub use report::{RunReport, StepReport};
pub use run::{Live, StepConfig};
pub use server::ServerProbe;

/// Errors that stop a run before or between steps.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad arguments or pool files.
    #[error("{0}")]
    Input(String),
    /// The server could not be reached or failed the calibration.
    #[error("{0}")]
    Server(String),
}

/// Capacity search settings.
#[derive(Debug, Clone)]
pub struct CapacitySearch {
    /// First stream count tried.
    pub start: usize,
    /// Never try more than this.
    pub max: usize,
    /// Stop bisecting when the bracket is within this fraction of the passing count (and 1 stream).
    pub precision: f64,
    /// Most steps in all.
    pub max_steps: usize,
    /// Pause between steps for the server to settle.
    pub pause: Duration,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub conn: ConnectOptions,
    pub wavs: Vec<PathBuf>,
    /// One entry per stream slot, round robin (repeat a rate to weight it).
    pub rates: Vec<u32>,
    /// Settings of a step (`streams` is the fixed count, or ignored by a capacity search).
    pub step: StepConfig,
    pub probe: ServerProbe,
    pub capacity: Option<CapacitySearch>,
}

/// Refuse targets outside the loopback range (this tool generates heavy load).
pub fn check_loopback(conn: &ConnectOptions) -> Result<(), LoadError> {
    let endpoint = kws_client::connect::endpoint(conn).map_err(|e| LoadError::Input(e.to_string()))?;
    let host = endpoint
        .uri()
        .host()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_string();
    let ok = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if ok {
        Ok(())
    } else {
        Err(LoadError::Input(format!(
            "kws-loadtest targets loopback only (127.0.0.0/8, ::1, localhost), not {host:?}"
        )))
    }
}

/// Next stream count to try, or None when the search is over. `pass`/`fail` are the largest
/// passing and smallest failing counts so far.
pub fn next_count(
    s: &CapacitySearch,
    last: usize,
    pass: Option<usize>,
    fail: Option<usize>,
) -> Option<usize> {
    match (pass, fail) {
        (_, Some(f)) => {
            let lo = pass.unwrap_or(0);
            let width = ((lo as f64 * s.precision).ceil() as usize).max(1);
            if f <= lo + width {
                return None;
            }
            let mid = lo + (f - lo) / 2;
            (mid > lo && mid < f).then_some(mid)
        }
        (Some(p), None) if p >= s.max => None,
        (Some(_), None) => Some((last * 2).min(s.max)),
        (None, None) => Some(last),
    }
}

/// Run the steps (one, or a capacity search), calling `on_step` after each.
pub async fn run(
    cfg: LoadConfig,
    // Starts the live progress display of a step; it must end once it holds the last `Arc<Live>`.
    live_hook: &(dyn Fn(Arc<Live>, usize) -> tokio::task::JoinHandle<()> + Sync),
    on_step: &mut (dyn FnMut(&StepReport) + Send),
) -> Result<RunReport, LoadError> {
    check_loopback(&cfg.conn)?;
    if let ServerProbe::Metrics(url) = &cfg.probe {
        let (hostport, _) = server::parse_http_url(url).map_err(LoadError::Input)?;
        check_loopback(&ConnectOptions::plaintext(hostport))
            .map_err(|e| LoadError::Input(format!("--metrics-url: {e}")))?;
    }
    if cfg.rates.is_empty() || cfg.wavs.is_empty() {
        return Err(LoadError::Input("need at least one WAV and one rate".into()));
    }
    let token = BearerToken::new(cfg.conn.token.as_deref()).map_err(|e| LoadError::Input(e.to_string()))?;
    let endpoint = kws_client::connect::endpoint(&cfg.conn).map_err(|e| LoadError::Input(e.to_string()))?;
    let client = Client::connect(&cfg.conn)
        .await
        .map_err(|e| LoadError::Server(e.to_string()))?;
    let variants = pool::prepare(
        &client,
        &cfg.wavs,
        &cfg.rates,
        cfg.step.duration_ms,
        &cfg.step.model,
        cfg.step.first_stage_only,
    )
    .await?;
    let mut report = RunReport {
        addr: cfg.conn.addr.clone(),
        model: cfg.step.model.clone(),
        first_stage_only: cfg.step.first_stage_only,
        wavs: cfg.wavs.iter().map(|p| p.display().to_string()).collect(),
        rates: cfg.rates.clone(),
        expected_per_stream: variants.iter().map(|v| v.expected.len() as u64).collect(),
        budget_ms: cfg.step.budget_ms,
        steps: Vec::new(),
        capacity: None,
        find_capacity: cfg.capacity.is_some(),
    };
    let mut step_cfg = cfg.step.clone();
    step_cfg.wavs = cfg.wavs.len();
    step_cfg.rates = cfg.rates.clone();
    let Some(search) = cfg.capacity.clone() else {
        let live = Arc::new(Live::default());
        let ticker = live_hook(live.clone(), step_cfg.streams);
        let r = run::run_step(&endpoint, &token, &variants, step_cfg, &cfg.probe, live).await;
        let _ = ticker.await;
        on_step(&r);
        report.steps.push(r);
        return Ok(report);
    };
    let (mut pass, mut fail) = (None::<usize>, None::<usize>);
    let mut n = search.start.max(1).min(search.max.max(1));
    let deadline = Instant::now()
        + (Duration::from_millis(cfg.step.ramp_up_ms + cfg.step.duration_ms)
            + Duration::from_secs(90)
            + search.pause)
            * search.max_steps as u32;
    for i in 0..search.max_steps {
        if i > 0 {
            tokio::time::sleep(search.pause).await;
        }
        let live = Arc::new(Live::default());
        let ticker = live_hook(live.clone(), n);
        let r = run::run_step(
            &endpoint,
            &token,
            &variants,
            StepConfig {
                streams: n,
                ..step_cfg.clone()
            },
            &cfg.probe,
            live,
        )
        .await;
        let _ = ticker.await;
        if r.pass {
            pass = Some(pass.map_or(n, |p: usize| p.max(n)));
        } else {
            fail = Some(fail.map_or(n, |f: usize| f.min(n)));
        }
        on_step(&r);
        report.steps.push(r);
        match next_count(&search, n, pass, fail) {
            Some(next) if Instant::now() < deadline => n = next,
            _ => break,
        }
    }
    report.capacity = pass;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(start: usize, max: usize) -> CapacitySearch {
        CapacitySearch {
            start,
            max,
            precision: 0.05,
            max_steps: 20,
            pause: Duration::ZERO,
        }
    }

    /// Simulate a server that holds `cap` streams: the search must find it exactly when the
    /// precision allows.
    #[test]
    fn capacity_search_converges() {
        for cap in [1usize, 7, 40, 100, 333] {
            let s = search(8, 1024);
            let (mut pass, mut fail) = (None, None);
            let mut n = s.start;
            let mut steps = 0;
            loop {
                steps += 1;
                if n <= cap {
                    pass = Some(pass.map_or(n, |p: usize| p.max(n)));
                } else {
                    fail = Some(fail.map_or(n, |f: usize| f.min(n)));
                }
                match next_count(&s, n, pass, fail) {
                    Some(next) => n = next,
                    None => break,
                }
            }
            let found = pass.unwrap_or(0);
            assert!(
                found <= cap && cap - found <= ((cap as f64 * 0.05).ceil() as usize).max(1),
                "cap {cap}: {found}"
            );
            assert!(steps <= 15, "cap {cap}: {steps} steps");
        }
        // Capped by max.
        assert_eq!(next_count(&search(8, 16), 16, Some(16), None), None);
    }

    #[test]
    fn loopback_only() {
        for ok in ["127.0.0.1:1", "http://localhost:1", "[::1]:5", "127.3.2.1:9"] {
            assert!(check_loopback(&ConnectOptions::plaintext(ok)).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.1:1", "example.com:443", "192.168.1.1:50051"] {
            assert!(check_loopback(&ConnectOptions::plaintext(bad)).is_err(), "{bad}");
        }
    }
}
