//! The counters behind `lease.stats`, kept in shared memory since server start (or the last
//! `lease_stats_reset()`); all zero when the library is not preloaded.
//!
//! Changes of leases are counted when they commit (`acquired`, `renewed`, `released`,
//! `expired_ttl`, `expired_session_end`, `revoked`); outcomes of calls are counted when the call
//! returns (`reacquired`, `conflicts`, `waits`, `wait_seconds`, `handovers`).

use std::sync::atomic::Ordering;

use crate::shared;

#[derive(Clone, Copy)]
pub enum Counter {
    /// New grants (including takeovers of expired leases).
    Acquired,
    /// Acquires by the current holder, which extend its lease (also counted as renewals).
    Reacquired,
    /// Acquires that returned NULL: held by another, queued waiters first, or the wait ran out.
    Conflicts,
    Renewed,
    Released,
    ExpiredTtl,
    ExpiredSessionEnd,
    Revoked,
    /// Acquires that waited.
    Waits,
    /// Microseconds spent waiting, all waits together.
    WaitMicros,
    /// Waits that ended with the lease granted.
    Handovers,
    /// Events not sent because PostgreSQL's NOTIFY queue was fuller than
    /// `lease.notify_queue_limit` when a transaction without an expiry worker committed (the
    /// worker's own drops show in `lease_event_stats()`).
    EventsDropped,
}

/// Number of counters.
pub const COUNTERS: usize = 12;

pub fn add(counter: Counter, amount: u64) {
    if let Some(shared) = shared::get() {
        shared.counters[counter as usize].fetch_add(amount, Ordering::Relaxed);
    }
}

/// Every counter's current value, in the order of [`Counter`].
pub fn read() -> [u64; COUNTERS] {
    let mut values = [0; COUNTERS];
    if let Some(shared) = shared::get() {
        for (value, counter) in values.iter_mut().zip(&shared.counters) {
            *value = counter.load(Ordering::Relaxed);
        }
    }
    values
}

pub fn reset() {
    if let Some(shared) = shared::get() {
        for counter in &shared.counters {
            counter.store(0, Ordering::Relaxed);
        }
    }
}
