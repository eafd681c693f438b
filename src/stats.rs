//! The counters behind `lease.stats`, kept in shared memory since server start (or the last
//! `lease_stats_reset()`); all zero when the library is not preloaded.
//!
//! Changes of leases are counted when they commit (`acquired`, `renewed`, `released`,
//! `expired_ttl`, `expired_session_end`, `revoked`); outcomes of calls are counted when the call
//! returns (`reacquired`, `conflicts`, `waits`, `wait_seconds`, `handovers`).
//!
//! Locking: none. Each counter is an atomic on its own, added to and read with relaxed
//! ordering: a reader may see one counter's change before another's, never a torn value.
//!
//! Uses [`crate::shmem`].

use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::prelude::*;

use crate::shmem::{self, Attached};

/// One counter of `lease.stats`; each is a field of [`Counters`].
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

/// The counters' values at one moment, one field per [`Counter`].
#[derive(Default)]
struct Counters {
    acquired: AtomicU64,
    reacquired: AtomicU64,
    conflicts: AtomicU64,
    renewed: AtomicU64,
    released: AtomicU64,
    expired_ttl: AtomicU64,
    expired_session_end: AtomicU64,
    revoked: AtomicU64,
    waits: AtomicU64,
    wait_micros: AtomicU64,
    handovers: AtomicU64,
    events_dropped: AtomicU64,
}

impl Counters {
    fn of(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Acquired => &self.acquired,
            Counter::Reacquired => &self.reacquired,
            Counter::Conflicts => &self.conflicts,
            Counter::Renewed => &self.renewed,
            Counter::Released => &self.released,
            Counter::ExpiredTtl => &self.expired_ttl,
            Counter::ExpiredSessionEnd => &self.expired_session_end,
            Counter::Revoked => &self.revoked,
            Counter::Waits => &self.waits,
            Counter::WaitMicros => &self.wait_micros,
            Counter::Handovers => &self.handovers,
            Counter::EventsDropped => &self.events_dropped,
        }
    }

    fn all(&self) -> [&AtomicU64; 12] {
        [
            &self.acquired,
            &self.reacquired,
            &self.conflicts,
            &self.renewed,
            &self.released,
            &self.expired_ttl,
            &self.expired_session_end,
            &self.revoked,
            &self.waits,
            &self.wait_micros,
            &self.handovers,
            &self.events_dropped,
        ]
    }
}

static COUNTERS: Attached<Counters> = Attached::new();

/// The counters' part of shared memory.
pub const SHMEM: shmem::Part = shmem::Part {
    name: c"lease counters",
    bytes: || std::mem::size_of::<Counters>(),
    locks: 0,
    init: |_, _| {}, // zero is every counter's start
    attach: |memory| COUNTERS.set(memory),
};

pub fn add(counter: Counter, amount: u64) {
    if let Some(counters) = COUNTERS.get() {
        counters.of(counter).fetch_add(amount, Ordering::Relaxed);
    }
}

/// `lease._stats()`: the counters behind `lease.stats`.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn stats_counters() -> TableIterator<
    'static,
    (
        name!(acquired, i64),
        name!(reacquired, i64),
        name!(conflicts, i64),
        name!(renewed, i64),
        name!(released, i64),
        name!(expired_ttl, i64),
        name!(expired_session_end, i64),
        name!(revoked, i64),
        name!(waits, i64),
        name!(wait_seconds, f64),
        name!(handovers, i64),
        name!(events_dropped, i64),
    ),
> {
    let zero = Counters::default();
    let counters = COUNTERS.get().unwrap_or(&zero);
    let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as i64;
    TableIterator::once((
        read(&counters.acquired),
        read(&counters.reacquired),
        read(&counters.conflicts),
        read(&counters.renewed),
        read(&counters.released),
        read(&counters.expired_ttl),
        read(&counters.expired_session_end),
        read(&counters.revoked),
        read(&counters.waits),
        read(&counters.wait_micros) as f64 / 1e6,
        read(&counters.handovers),
        read(&counters.events_dropped),
    ))
}

/// Sets the counters of `lease.stats` back to zero. Not executable by PUBLIC.
#[pg_extern(sql = false)]
fn lease_stats_reset() {
    if let Some(counters) = COUNTERS.get() {
        for counter in counters.all() {
            counter.store(0, Ordering::Relaxed);
        }
    }
}
