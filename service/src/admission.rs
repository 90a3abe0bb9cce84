//! Admission of Detect streams in two stages, so that streams which have not (yet) sent their config
//! cannot take the slots of configured ones.
//!
//! 1. **Awaiting config.** A stream that opens gets a place in a small budget of its own: at most
//!    `max_streams_awaiting_config_per_connection` per HTTP/2 connection and
//!    `max_streams_awaiting_config` on the server, for at most `first_message_timeout_ms`. When a
//!    budget is full the *oldest* waiting stream of that connection (or of the server) is evicted with
//!    RESOURCE_EXHAUSTED: a client that sends its config at once (as every real client does) waits
//!    microseconds and is never the oldest, so a flood of streams that send nothing — on one
//!    connection or many — evicts only itself.
//! 2. **Configured.** Once the config is valid, the stream takes one of the `max_streams` slots
//!    (`Semaphore::try_acquire_owned`; RESOURCE_EXHAUSTED at once if none is free) and keeps it until
//!    it ends.
//!
//! Gauges: `kws_streams_awaiting_config` (stage 1) and `kws_active_streams` (stage 2).
//!
//! Before stage 2, load shedding (`grpc.rs`) asks [`CpuMeter`] whether one more stream fits in the
//! CPU the pod may use: the process's measured CPU per scoring stream, times the streams admitted
//! plus one, against `shed_cpu_utilisation` of the CPU limit (cgroup quota or cores); and, since a
//! new stream's cost shows only once it scores, at most max(64, scoring, the streams the measured CPU
//! still has room for) streams may be warming up.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::telemetry::names;

/// Which budget a waiting stream was evicted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Connection,
    Server,
}

/// The budget of streams awaiting their config; shared by all connections.
#[derive(Debug)]
pub struct AwaitingBudget {
    max_total: usize,
    max_per_connection: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Waiting streams by age (ids increase).
    waiting: BTreeMap<u64, Entry>,
    per_connection: HashMap<Option<SocketAddr>, usize>,
}

#[derive(Debug)]
struct Entry {
    peer: Option<SocketAddr>,
    evict: oneshot::Sender<Scope>,
}

/// A stream's place in the budget; released when dropped (config received, stream gone).
#[derive(Debug)]
pub struct AwaitingSlot {
    budget: Arc<AwaitingBudget>,
    id: u64,
    /// Resolves if the stream is evicted to make room for a newer one.
    pub evicted: oneshot::Receiver<Scope>,
}

impl AwaitingBudget {
    pub fn new(max_total: usize, max_per_connection: usize) -> Arc<Self> {
        metrics::gauge!(names::AWAITING_CONFIG).set(0.0);
        Arc::new(Self {
            max_total,
            max_per_connection,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that matters
        // more than refusing every stream would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a place for a stream that just opened on connection `peer`, evicting the oldest waiting
    /// stream of that connection (or of the server) if its budget is full. Never fails.
    pub fn enter(self: &Arc<Self>, peer: Option<SocketAddr>) -> AwaitingSlot {
        let mut s = self.lock();
        if s.per_connection.get(&peer).copied().unwrap_or(0) >= self.max_per_connection {
            let oldest = s.waiting.iter().find(|(_, e)| e.peer == peer).map(|(id, _)| *id);
            if let Some(id) = oldest {
                s.evict(id, Scope::Connection);
            }
        }
        if s.waiting.len() >= self.max_total
            && let Some(id) = s.waiting.keys().next().copied()
        {
            s.evict(id, Scope::Server);
        }
        let id = s.next_id;
        s.next_id += 1;
        let (tx, rx) = oneshot::channel();
        s.waiting.insert(id, Entry { peer, evict: tx });
        *s.per_connection.entry(peer).or_insert(0) += 1;
        metrics::gauge!(names::AWAITING_CONFIG).set(s.waiting.len() as f64);
        AwaitingSlot {
            budget: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// Streams waiting for their config now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// The configured limits: (server, per connection).
    pub fn limits(&self) -> (usize, usize) {
        (self.max_total, self.max_per_connection)
    }
}

impl State {
    /// Remove a waiting stream; `evict` tells it why (`None`: it left by itself).
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.waiting.remove(&id)?;
        if let Some(n) = self.per_connection.get_mut(&e.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_connection.remove(&e.peer);
            }
        }
        Some(e)
    }

    fn evict(&mut self, id: u64, scope: Scope) {
        if let Some(e) = self.remove(id) {
            let _ = e.evict.send(scope);
        }
    }
}

impl Drop for AwaitingSlot {
    fn drop(&mut self) {
        let mut s = self.budget.lock();
        s.remove(self.id);
        metrics::gauge!(names::AWAITING_CONFIG).set(s.waiting.len() as f64);
    }
}

/// Admission by measured CPU. A stream's CPU cost differs by node type (int8 kernels, clock,
/// neighbours), so instead of trusting `max_streams` alone, the pod measures what its streams cost
/// now — the process's CPU over the last two seconds per scoring stream, and per second of audio
/// scored — and refuses a new stream when the admitted ones plus it would need more than
/// `utilisation` of the CPU it may use. That sees a CPU quota (a pod's `limits.cpu`) before any
/// queue does: under a quota the process is stopped for the rest of each period once it has used
/// its share, so the scoring queue and the runtime's timers stay short until the backlog is
/// already seconds long.
#[derive(Debug)]
pub struct CpuMeter {
    limit_cores: f64,
    source: &'static str,
    utilisation: f64,
    /// Cores used by the process over the last [`CpuMeter::WINDOW`] (f64 bits); NaN until measured.
    used: AtomicU64,
    /// Seconds of audio scored per second over the same window (f64 bits).
    audio_rate: AtomicU64,
    /// Streams scoring, averaged over the same window (f64 bits): during a ramp the CPU measured
    /// over the window belongs to fewer streams than score now.
    scoring_avg: AtomicU64,
    /// Audio scored by all streams since start, ms (sessions add to it as their windows are scored).
    processed_ms: AtomicU64,
    /// When the streams that passed [`CpuMeter::admit`] in the last [`CpuMeter::WARM_UP`] did.
    recent: Mutex<VecDeque<Instant>>,
}

/// Why [`CpuMeter::admit`] refused a stream: the figures for the message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuRefusal {
    /// The admitted streams plus one would need more than the allowed CPU.
    Full {
        used_cores: f64,
        scoring: usize,
        cpu_per_audio_s: f64,
        needed_cores: f64,
        allowed_cores: f64,
        limit_cores: f64,
    },
    /// Too many admitted streams have not started scoring: their cost is not measured yet.
    Burst { warming: usize, allowed: usize },
}

impl CpuMeter {
    /// The measurement window (process CPU sampled every eighth of it).
    pub const WINDOW: Duration = Duration::from_secs(2);
    /// Streams that may warm up at once however few are scoring (a pod that starts, or one with
    /// few streams, is not refused a small burst: a 20-streams-per-second ramp lost 6-7 of 200
    /// streams with 16; 64 is still under the capacity of a 0.5-core quota, ~140 streams).
    pub const MIN_WARMING: usize = 64;
    /// A stream counts as warming up for the burst rule only this long after its admission: one
    /// that sends no audio (it never scores) cannot hold the rule shut for everyone.
    pub const WARM_UP: Duration = Duration::from_secs(2);

    /// `limit_cores` 0 = detect (cgroup quota, else the CPUs this process may run on);
    /// `utilisation` 0 = the rule is off.
    pub fn new(limit_cores: f64, utilisation: f64) -> Arc<Self> {
        let (limit_cores, source) = if limit_cores > 0.0 {
            (limit_cores, "config")
        } else {
            detect_cpu_limit()
        };
        metrics::gauge!(names::CPU_LIMIT).set(limit_cores);
        Arc::new(Self {
            limit_cores,
            source,
            utilisation,
            used: AtomicU64::new(f64::NAN.to_bits()),
            audio_rate: AtomicU64::new(0f64.to_bits()),
            scoring_avg: AtomicU64::new(0f64.to_bits()),
            processed_ms: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    /// The CPU limit in cores and where it came from (`config`, `cgroup`, `cpus`).
    pub fn limit(&self) -> (f64, &'static str) {
        (self.limit_cores, self.source)
    }

    /// A stream's audio scored from `from_ms` to `to_ms` (called per scored job). The stream's
    /// first second is not counted: it is scored at once with the first window, and during a ramp
    /// those bursts would make the audio look cheap.
    pub fn add_processed(&self, from_ms: u64, to_ms: u64) {
        let ms = to_ms.saturating_sub(from_ms.max(1000));
        self.processed_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Record, over the last window, the cores the process used, the seconds of audio it scored per
    /// second and the streams scoring on average.
    pub fn record(&self, cores: f64, audio_rate: f64, scoring_avg: f64) {
        self.audio_rate.store(audio_rate.to_bits(), Ordering::Relaxed);
        self.scoring_avg.store(scoring_avg.to_bits(), Ordering::Relaxed);
        self.used.store(cores.to_bits(), Ordering::Relaxed);
    }

    /// Cores used over the last window (None before the first full window).
    pub fn used(&self) -> Option<f64> {
        let v = f64::from_bits(self.used.load(Ordering::Relaxed));
        v.is_finite().then_some(v)
    }

    /// May one more stream be admitted, with `active` admitted of which `warming` have not scored
    /// their first window yet (their cost does not show in the measurement)?
    ///
    /// 1. At most max([`MIN_WARMING`](Self::MIN_WARMING), scoring, room) streams warming up
    ///    (counting only those admitted in the last [`WARM_UP`](Self::WARM_UP)), where `room` is
    ///    how many streams beyond the scoring ones the measured cost per stream says still fit in
    ///    the allowed CPU: far from the limit a burst of connections (a pod that starts, clients of
    ///    a lost pod reconnecting) is admitted at once; near it, or before anything is measured,
    ///    admission can at most double the measured load per warm-up (~1 s), so a burst cannot be
    ///    admitted before its cost shows.
    /// 2. While the process uses at least half of the allowed CPU: cost × (active + 1) ≤
    ///    `utilisation` × limit, where a stream's cost is the larger of `used` / scoring (catches
    ///    clients sending faster than real time) and `used` / audio scored per second, i.e. the
    ///    CPU-seconds per audio-second of one real-time stream (catches a process that gets less
    ///    CPU than it needs: its CPU per stream then looks small because the work is not done, but
    ///    its CPU per audio-second does not). Everything the process spends is charged to the
    ///    streams (idle, connection and warm-up costs included), an overestimate that matters only
    ///    at low load, where the floor keeps it from binding.
    ///
    /// A stream that passes is remembered as admitted now (even if the stream limit then refuses
    /// it: an overcount that only errs towards caution).
    pub fn admit(&self, active: usize, warming: usize) -> Result<(), CpuRefusal> {
        self.admit_at(active, warming, Instant::now())
    }

    fn admit_at(&self, active: usize, warming: usize, now: Instant) -> Result<(), CpuRefusal> {
        if self.utilisation <= 0.0 {
            return Ok(());
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Self::WARM_UP)
        {
            recent.pop_front();
        }
        let scoring = active.saturating_sub(warming);
        // Streams the measured CPU still has room for may warm up too: on a node far from its limit
        // a reconnect storm is admitted at once; near the limit (or before anything was measured)
        // the load can at most double per warm-up.
        let cost = self.cost(scoring);
        let room = cost.map_or(0, |c| {
            let fits = (self.utilisation * self.limit_cores / c.per_stream).floor();
            (fits.min(usize::MAX as f64) as usize).saturating_sub(scoring)
        });
        let allowed = scoring.max(Self::MIN_WARMING).max(room);
        let warming = warming.min(recent.len());
        if warming >= allowed {
            return Err(CpuRefusal::Burst { warming, allowed });
        }
        self.check_cpu(active, scoring, cost)?;
        recent.push_back(now);
        Ok(())
    }

    /// What the last window measured, with `scoring` streams scoring now; None before the first
    /// measurement or with none scoring. A stream's cost is the larger of `used` / scoring and
    /// `used` / audio scored per second (see [`admit`](Self::admit)).
    fn cost(&self, scoring: usize) -> Option<Cost> {
        let used_cores = self.used()?;
        if scoring == 0 {
            return None;
        }
        let audio_rate = f64::from_bits(self.audio_rate.load(Ordering::Relaxed));
        // Nothing scored in the window while streams are scoring: starved, count a real-time
        // stream as costing the whole measured CPU (the queue-wait rule sees this case too).
        let cpu_per_audio_s = used_cores / audio_rate.max(1.0);
        let scoring_avg = f64::from_bits(self.scoring_avg.load(Ordering::Relaxed));
        let per_stream = (used_cores / scoring_avg.clamp(1.0, scoring as f64)).max(cpu_per_audio_s);
        (per_stream > 0.0).then_some(Cost {
            used_cores,
            per_stream,
            cpu_per_audio_s,
        })
    }

    fn check_cpu(&self, active: usize, scoring: usize, cost: Option<Cost>) -> Result<(), CpuRefusal> {
        let allowed_cores = self.utilisation * self.limit_cores;
        let Some(Cost {
            used_cores,
            per_stream,
            cpu_per_audio_s,
        }) = cost
        else {
            return Ok(());
        };
        if used_cores < allowed_cores / 2.0 {
            return Ok(());
        }
        let needed_cores = per_stream * (active + 1) as f64;
        if needed_cores > allowed_cores {
            return Err(CpuRefusal::Full {
                used_cores,
                scoring,
                cpu_per_audio_s,
                needed_cores,
                allowed_cores,
                limit_cores: self.limit_cores,
            });
        }
        Ok(())
    }
}

/// The process's CPU as the last window measured it, and what one stream is charged.
#[derive(Debug, Clone, Copy)]
struct Cost {
    used_cores: f64,
    per_stream: f64,
    cpu_per_audio_s: f64,
}

/// The client-facing error of a [`CpuRefusal`].
pub fn refusal_error(r: CpuRefusal, retry_ms: u64) -> crate::error::ServiceError {
    use crate::error::ServiceError;
    match r {
        CpuRefusal::Full {
            used_cores,
            scoring,
            cpu_per_audio_s,
            needed_cores,
            allowed_cores,
            limit_cores,
        } => ServiceError::CpuFull {
            scoring,
            used_cores,
            cpu_per_audio_s,
            needed_cores,
            allowed_cores,
            limit_cores,
            retry_ms,
        },
        CpuRefusal::Burst { warming, allowed } => ServiceError::Burst {
            warming,
            allowed,
            retry_ms,
        },
    }
}

/// Sample the process's CPU time, the audio scored and the streams scoring (`scoring()`) every
/// eighth of a window into `meter` and `kws_cpu_used_cores`.
pub async fn sample_cpu(meter: Arc<CpuMeter>, scoring: impl Fn() -> usize) {
    let gauge = metrics::gauge!(names::CPU_USED);
    let mut tick = tokio::time::interval(CpuMeter::WINDOW / 8);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (when, CPU seconds, audio ms scored, streams scoring)
    let mut samples: VecDeque<(Instant, f64, u64, usize)> = VecDeque::new();
    loop {
        tick.tick().await;
        let Some((cpu_s, _)) = crate::telemetry::read_proc_self() else {
            continue;
        };
        let audio_ms = meter.processed_ms.load(Ordering::Relaxed);
        let now = Instant::now();
        samples.push_back((now, cpu_s, audio_ms, scoring()));
        while samples.len() > 2 && now.duration_since(samples[1].0) >= CpuMeter::WINDOW {
            samples.pop_front();
        }
        if let Some(&(t0, c0, a0, _)) = samples.front() {
            let span = now.duration_since(t0).as_secs_f64();
            if span >= CpuMeter::WINDOW.as_secs_f64() {
                let cores = (cpu_s - c0).max(0.0) / span;
                let audio_rate = audio_ms.saturating_sub(a0) as f64 / 1000.0 / span;
                // The samples after the first cover the window's intervals.
                let n = (samples.len() - 1).max(1) as f64;
                let scoring_avg = samples.iter().skip(1).map(|s| s.3 as f64).sum::<f64>() / n;
                meter.record(cores, audio_rate, scoring_avg);
                gauge.set(cores);
            }
        }
    }
}

/// The CPU this process may use, in cores: the tightest CFS quota of its cgroup and the cgroup's
/// ancestors (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), or the CPUs it may run on.
pub fn detect_cpu_limit() -> (f64, &'static str) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    match cgroup_quota(&cgroups, Path::new("/sys/fs/cgroup")) {
        Some(q) if q < cpus => (q, "cgroup"),
        _ => (cpus, "cpus"),
    }
}

/// The tightest CPU quota (cores) along the cgroup path of `/proc/self/cgroup` text `cgroups`, with
/// the cgroup filesystem mounted at `root`.
fn cgroup_quota(cgroups: &str, root: &Path) -> Option<f64> {
    let mut best: Option<f64> = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        // v2 (unified) hierarchy, mounted at the root or under `unified` on hybrid systems.
        let mut dirs: Vec<std::path::PathBuf> = Vec::new();
        if controllers.is_empty() {
            dirs.extend([root.join(rel), root.join("unified").join(rel)]);
        } else if controllers.split(',').any(|c| c == "cpu") {
            dirs.extend([root.join("cpu").join(rel), root.join("cpu,cpuacct").join(rel)]);
        } else {
            continue;
        }
        for dir in dirs {
            let mut d = Some(dir.as_path());
            while let Some(p) = d {
                if !p.starts_with(root) {
                    break;
                }
                if let Some(q) = quota_in(p) {
                    best = Some(best.map_or(q, |b: f64| b.min(q)));
                }
                d = p.parent();
            }
        }
    }
    best
}

/// The quota set directly in cgroup directory `dir`, in cores.
fn quota_in(dir: &Path) -> Option<f64> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let (quota, period) = if let Some(max) = read("cpu.max") {
        let mut it = max.split_whitespace();
        (it.next()?.parse::<f64>().ok()?, it.next()?.parse::<f64>().ok()?)
    } else {
        (
            read("cpu.cfs_quota_us")?.trim().parse::<f64>().ok()?,
            read("cpu.cfs_period_us")?.trim().parse::<f64>().ok()?,
        )
    };
    // v2 writes "max", v1 -1 for "no quota".
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cores a refused stream would have needed (panics unless refused by the CPU rule).
    fn needed_cores(r: Result<(), CpuRefusal>) -> f64 {
        match r {
            Err(CpuRefusal::Full { needed_cores, .. }) => needed_cores,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_more_stream_must_fit_in_the_allowed_cpu() {
        let m = CpuMeter::new(0.5, 0.8);
        assert_eq!(m.limit(), (0.5, "config"));
        // Nothing measured yet: admitted.
        assert_eq!(m.admit(100, 0), Ok(()));
        m.record(0.39, 130.0, 130.0);
        // 0.39 cores for 130 scoring streams = 0.003 each; 131 need 0.393 <= 0.4.
        assert_eq!(m.admit(130, 0), Ok(()));
        // 140 admitted (10 warming): 0.39 / 130 * 141 = 0.423 > 0.4.
        match m.admit(140, 10) {
            Err(CpuRefusal::Full {
                used_cores,
                scoring,
                cpu_per_audio_s,
                needed_cores,
                allowed_cores,
                limit_cores,
            }) => {
                assert_eq!((used_cores, scoring, limit_cores), (0.39, 130, 0.5));
                assert!((cpu_per_audio_s - 0.003).abs() < 1e-9, "{cpu_per_audio_s}");
                assert!((needed_cores - 0.423).abs() < 1e-3, "{needed_cores}");
                assert!((allowed_cores - 0.4).abs() < 1e-9, "{allowed_cores}");
            }
            other => panic!("{other:?}"),
        }
        // Below half the allowed CPU the estimate does not bind (fixed costs dominate it).
        // A starved process: 0.3 cores for 130 scoring streams looks cheap per stream (0.0023), but
        // it scored only 75 s of audio per second (0.004 CPU-s per audio-s): 131 need 0.52.
        m.record(0.3, 75.0, 130.0);
        let needed = needed_cores(m.admit(130, 0));
        assert!((needed - 0.524).abs() < 1e-3, "{needed}");
        // Streams sending faster than real time: 130 s of audio per second from 10 streams at
        // 0.39 cores is cheap per audio-second but 0.039 cores per stream: 11 need 0.43.
        m.record(0.39, 130.0, 10.0);
        assert!(matches!(m.admit(10, 0), Err(CpuRefusal::Full { .. })));
        // A ramp: the 0.25 cores measured over the window were used by 50 streams on average, not
        // by the 100 scoring now: 111 need 0.555 (0.28 if charged to the 100).
        m.record(0.25, 60.0, 50.0);
        let needed = needed_cores(m.admit(110, 10));
        assert!((needed - 0.555).abs() < 1e-3, "{needed}");
        // Below half the allowed CPU the estimate does not bind (fixed costs dominate it): 1
        // scoring of 3 admitted at 0.19 cores would project 0.76 cores.
        m.record(0.19, 1.0, 1.0);
        assert_eq!(m.admit(3, 2), Ok(()));
        m.record(0.21, 1.0, 1.0);
        assert!(matches!(m.admit(3, 2), Err(CpuRefusal::Full { .. })));
        // Off.
        let off = CpuMeter::new(0.5, 0.0);
        off.record(10.0, 1.0, 1.0);
        assert_eq!(off.admit(1000, 999), Ok(()));
    }

    #[test]
    fn at_most_max_16_the_scoring_or_the_measured_room_warm_up_at_once() {
        /// Beside `scoring` scoring streams, `allowed` may warm up at once, and not one more.
        fn burst_after(m: &CpuMeter, scoring: usize, allowed: usize, at: Instant) {
            for n in 0..allowed {
                assert_eq!(m.admit_at(scoring + n, n, at), Ok(()), "{n}");
            }
            assert_eq!(
                m.admit_at(scoring + allowed, allowed, at),
                Err(CpuRefusal::Burst {
                    warming: allowed,
                    allowed
                })
            );
        }
        let t0 = Instant::now();
        // Nothing measured, nothing scoring: 64 may warm up, not 65.
        let m = CpuMeter::new(2.0, 0.8);
        burst_after(&m, 0, CpuMeter::MIN_WARMING, t0);
        // Streams that have not scored WARM_UP after their admission (no audio) stop counting.
        let later = t0 + CpuMeter::WARM_UP;
        assert_eq!(m.admit_at(64, 64, later), Ok(()));
        // With 100 scoring, up to 100 more may warm up: the load at most doubles per warm-up.
        burst_after(&CpuMeter::new(2.0, 0.8), 100, 100, t0);
        // Measured room: 16 scoring at 0.1 cores (0.00625 each) leave room for 256 in the 1.6
        // cores allowed, so 240 may warm up at once (a node far from its limit takes a burst).
        // (Near the limit, at half the allowed CPU or more, the room is below the scoring count and
        // the CPU rule refuses first: tested above.)
        let m = CpuMeter::new(2.0, 0.8);
        m.record(0.1, 16.0, 16.0);
        burst_after(&m, 16, 240, t0);
        // Off: no limit at all.
        let off = CpuMeter::new(2.0, 0.0);
        assert_eq!(off.admit_at(1000, 1000, t0), Ok(()));
    }

    #[test]
    fn the_tightest_quota_of_the_cgroup_and_its_parents() {
        let root = std::env::temp_dir().join(format!("kws-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // v1: cpu:/pod/ctr with 150 ms per 100 ms on the container, 50 ms per 100 ms on the pod.
        let ctr = root.join("cpu/pod/ctr");
        std::fs::create_dir_all(&ctr).unwrap();
        std::fs::write(ctr.join("cpu.cfs_quota_us"), "150000\n").unwrap();
        std::fs::write(ctr.join("cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(root.join("cpu/pod/cpu.cfs_quota_us"), "50000\n").unwrap();
        std::fs::write(root.join("cpu/pod/cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(root.join("cpu/cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(root.join("cpu/cpu.cfs_period_us"), "100000\n").unwrap();
        let v1 = "4:memory:/pod/ctr\n1:cpu:/pod/ctr\n0::/\n";
        assert_eq!(cgroup_quota(v1, &root), Some(0.5));
        // v2: 0::/kubepods/pod1 with "250000 100000" and "max 100000" above it.
        let pod = root.join("kubepods/pod1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("cpu.max"), "250000 100000\n").unwrap();
        std::fs::write(root.join("kubepods/cpu.max"), "max 100000\n").unwrap();
        assert_eq!(cgroup_quota("0::/kubepods/pod1\n", &root), Some(2.5));
        // No quota anywhere.
        assert_eq!(cgroup_quota("0::/kubepods\n", &root), None);
        assert_eq!(cgroup_quota("garbage\n", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(([127, 0, 0, 1], port).into())
    }

    #[test]
    fn the_oldest_of_a_full_connection_is_evicted() {
        let b = AwaitingBudget::new(100, 2);
        let mut a1 = b.enter(peer(1));
        let mut a2 = b.enter(peer(1));
        let mut other = b.enter(peer(2));
        let mut a3 = b.enter(peer(1));
        assert_eq!(a1.evicted.try_recv(), Ok(Scope::Connection));
        assert!(a2.evicted.try_recv().is_err() && a3.evicted.try_recv().is_err());
        assert!(other.evicted.try_recv().is_err());
        assert_eq!(b.waiting(), 3);
        drop(a1);
        assert_eq!(b.waiting(), 3, "an evicted slot is already gone");
        drop((a2, a3, other));
        assert_eq!(b.waiting(), 0);
        assert!(b.lock().per_connection.is_empty());
    }

    #[test]
    fn the_oldest_on_the_server_is_evicted_when_the_total_is_full() {
        let b = AwaitingBudget::new(3, 10);
        let mut slots: Vec<AwaitingSlot> = (1..=3).map(|p| b.enter(peer(p))).collect();
        let mut newest = b.enter(peer(9));
        assert_eq!(slots[0].evicted.try_recv(), Ok(Scope::Server));
        assert!(slots[1].evicted.try_recv().is_err() && newest.evicted.try_recv().is_err());
        assert_eq!(b.waiting(), 3);
        slots.clear();
        drop(newest);
        assert_eq!(b.waiting(), 0);
    }
}
