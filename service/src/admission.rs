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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

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

#[cfg(test)]
mod tests {
    use super::*;

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
