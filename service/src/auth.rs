//! Bearer-token authentication of the `kws.v1.KeywordSpotting` service.
//!
//! Tokens come from `auth.tokens_file` (one per line, `#` comments) and/or the environment variable
//! named by `auth.tokens_env` (comma-separated). When neither is configured, authentication is off.
//! When either is, every kws call (Detect, GetModelInfo, ListModels, SubmitFeedback) needs the
//! metadata `authorization: Bearer <token>`; health and reflection are not wrapped, so probes work
//! without a token.
//!
//! Comparison is constant-time: only SHA-256 digests of the accepted tokens are kept, the presented
//! token is hashed, and it is compared with every digest (`subtle`), so neither the position of the
//! first differing byte nor the token length shows in the timing. Tokens are never logged.
//!
//! Reloading: on SIGHUP, and when the file's (mtime, size, inode) changes, checked every
//! `auth.watch_interval_ms`. A reload that fails (unreadable file) keeps the previous tokens; an
//! empty token set refuses every call (fail closed). Both are logged and counted
//! (`kws_auth_reloads_total{result}`); refused calls count in `kws_rejected_total{reason="unauthenticated"}`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::config::{AuthConfig, ConfigError};
use crate::error::ServiceError;
use crate::telemetry::names;

/// Longest accepted `authorization` value; longer ones are refused before hashing.
const MAX_HEADER_BYTES: usize = 4096;
/// At most one log line per this interval for refused calls (an attacker must not flood the logs).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The accepted tokens, as SHA-256 digests.
#[derive(Clone, Default)]
struct TokenSet(Vec<[u8; 32]>);

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.0.len())
    }
}

impl TokenSet {
    fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        let mut digests: Vec<[u8; 32]> = tokens.into_iter().map(digest).collect();
        digests.sort_unstable();
        digests.dedup();
        Self(digests)
    }

    /// Constant-time membership: every digest is compared, whatever matches.
    fn contains(&self, token: &str) -> bool {
        let d = digest(token);
        let mut found = subtle::Choice::from(0);
        for t in &self.0 {
            found |= t.ct_eq(&d);
        }
        found.into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Tokens of a tokens file: one per line, surrounding blanks trimmed, empty and `#` lines skipped.
pub fn parse_file(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Tokens of the environment variable: comma-separated, blanks trimmed, empty entries skipped.
pub fn parse_env(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// File identity used to notice a change (k8s secret updates swap a symlink: the inode changes).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The accepted tokens and where they come from; shared by the interceptor and the reload task.
#[derive(Debug)]
pub struct Auth {
    tokens: RwLock<Arc<TokenSet>>,
    file: Option<PathBuf>,
    env: Option<String>,
    stamp: RwLock<Stamp>,
    last_failure_log: AtomicU64,
    started: Instant,
}

impl Auth {
    /// Authentication as configured: `None` when no token source is configured (auth off). Fails if
    /// the tokens file cannot be read at start-up.
    pub fn from_config(cfg: &AuthConfig) -> Result<Option<Arc<Self>>, ConfigError> {
        Self::with_env_reader(cfg, |name| std::env::var(name).ok())
    }

    /// [`from_config`](Self::from_config) with a given environment lookup (tests).
    pub fn with_env_reader(
        cfg: &AuthConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let auth = Self {
            tokens: RwLock::new(Arc::new(TokenSet::default())),
            file: cfg.tokens_file.clone(),
            env: cfg.tokens_env.clone(),
            stamp: RwLock::new(None),
            last_failure_log: AtomicU64::new(0),
            started: Instant::now(),
        };
        let n = auth.load(&env).map_err(ConfigError)?;
        if n == 0 {
            tracing::warn!("auth is on but no token is configured: every kws call will be refused");
        } else {
            tracing::info!(tokens = n, "bearer-token authentication on");
        }
        Ok(Some(Arc::new(auth)))
    }

    /// Read the sources and swap the token set; on error the previous set stays.
    fn load(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<usize, String> {
        let mut text = String::new();
        let stamp_now = match &self.file {
            Some(path) => {
                let s = stamp(path);
                // Remember the stamp even if the read fails: retry when the file changes again,
                // not at every poll.
                *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = s;
                text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read auth.tokens_file {}: {e}", path.display()))?;
                s
            }
            None => None,
        };
        let env_value = self.env.as_deref().and_then(env).unwrap_or_default();
        let set = TokenSet::from_tokens(parse_file(&text).into_iter().chain(parse_env(&env_value)));
        let n = set.0.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = stamp_now;
        Ok(n)
    }

    /// Reload now (SIGHUP, file change); logged and counted.
    pub fn reload(&self, why: &'static str) {
        match self.load(&|name| std::env::var(name).ok()) {
            Ok(n) => {
                metrics::counter!(names::AUTH_RELOADS, "result" => "ok").increment(1);
                if n == 0 {
                    tracing::warn!(
                        why,
                        "tokens reloaded: none configured, every kws call will be refused"
                    );
                } else {
                    tracing::info!(why, tokens = n, "tokens reloaded");
                }
            }
            Err(e) => {
                metrics::counter!(names::AUTH_RELOADS, "result" => "error").increment(1);
                tracing::error!(why, error = %e, "token reload failed; keeping the previous tokens");
            }
        }
    }

    /// True if the tokens file changed since it was last read.
    fn file_changed(&self) -> bool {
        match &self.file {
            Some(path) => stamp(path) != *self.stamp.read().unwrap_or_else(|e| e.into_inner()),
            None => false,
        }
    }

    /// Check the `authorization` metadata value of a call.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), ServiceError> {
        let unauth = |m: &str| Err(ServiceError::Unauthenticated(m.into()));
        let Some(raw) = header else {
            return unauth("missing bearer token: send the metadata `authorization: Bearer <token>`");
        };
        if raw.len() > MAX_HEADER_BYTES {
            return unauth("authorization metadata too long");
        }
        let Ok(value) = std::str::from_utf8(raw) else {
            return unauth("authorization metadata is not valid text; send `authorization: Bearer <token>`");
        };
        let Some((scheme, token)) = value.trim().split_once(' ') else {
            return unauth("authorization metadata must be `Bearer <token>`");
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return unauth(
                "authorization metadata must be `Bearer <token>` (other schemes are not accepted)",
            );
        }
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner()).clone();
        if tokens.contains(token.trim()) {
            Ok(())
        } else {
            unauth("invalid bearer token")
        }
    }

    fn log_failure(&self, e: &ServiceError) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_failure_log.load(Ordering::Relaxed);
        let interval = FAILURE_LOG_INTERVAL.as_millis() as u64;
        if (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .last_failure_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, "call refused: unauthenticated (logged at most once per second; see kws_rejected_total)");
        }
    }
}

/// The tonic interceptor in front of the kws service. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AuthInterceptor(Option<Arc<Auth>>);

impl AuthInterceptor {
    /// `None` lets every call through (auth off).
    pub fn new(auth: Option<Arc<Auth>>) -> Self {
        Self(auth)
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(auth) = &self.0 else {
            return Ok(request);
        };
        let header = request.metadata().get("authorization").map(|v| v.as_bytes());
        match auth.check(header) {
            Ok(()) => Ok(request),
            Err(e) => {
                metrics::counter!(names::REJECTED, "reason" => e.outcome()).increment(1);
                auth.log_failure(&e);
                Err(e.into())
            }
        }
    }
}

/// Reload the tokens on SIGHUP and when the file changes (polled every `interval`; zero = SIGHUP
/// only). Runs until aborted.
pub async fn watch(auth: Arc<Auth>, interval: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; tokens reload on file change only");
            None
        }
    };
    let poll = !interval.is_zero() && auth.file.is_some();
    let mut tick = tokio::time::interval(if poll { interval } else { Duration::from_secs(3600) });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                auth.reload("SIGHUP");
            }
            _ = tick.tick() => {
                if poll && auth.file_changed() {
                    auth.reload("file changed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(file: Option<PathBuf>, env: Option<&str>) -> AuthConfig {
        AuthConfig {
            tokens_file: file,
            tokens_env: env.map(String::from),
            watch_interval_ms: 0,
        }
    }

    #[test]
    fn off_without_sources() {
        assert!(Auth::from_config(&cfg(None, None)).expect("ok").is_none());
    }

    #[test]
    fn parses_file_and_env() {
        assert_eq!(parse_file("# c\n a \n\n#b\nc d\n"), vec!["a", "c d"]);
        assert_eq!(parse_env(" x, ,y,"), vec!["x", "y"]);
    }

    #[test]
    fn checks_tokens_from_env() {
        let auth = Auth::with_env_reader(&cfg(None, Some("T")), |n| {
            (n == "T").then(|| "s3cret, other".to_string())
        })
        .expect("ok")
        .expect("on");
        assert!(auth.check(Some(b"Bearer s3cret")).is_ok());
        assert!(auth.check(Some(b"bearer other")).is_ok());
        for (h, want) in [
            (None, "missing bearer token"),
            (Some(&b"Bearer s3cre"[..]), "invalid bearer token"),
            (Some(&b"Bearer s3cret2"[..]), "invalid bearer token"),
            (Some(&b"Basic s3cret"[..]), "other schemes"),
            (Some(&b"s3cret"[..]), "must be `Bearer <token>`"),
            (Some(&[0xff, 0x20, 0x41][..]), "not valid text"),
        ] {
            match auth.check(h) {
                Err(ServiceError::Unauthenticated(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{h:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_set_refuses_everything_and_bad_file_fails_at_start() {
        let auth = Auth::with_env_reader(&cfg(None, Some("T")), |_| None)
            .expect("ok")
            .expect("on");
        assert!(auth.check(Some(b"Bearer ")).is_err());
        assert!(auth.check(Some(b"Bearer x")).is_err());
        let missing = cfg(Some("/nonexistent/kws-tokens".into()), None);
        let e = Auth::from_config(&missing).expect_err("unreadable file");
        assert!(e.to_string().contains("auth.tokens_file"), "{e}");
    }
}
