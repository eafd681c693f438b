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

/// One counter of `lease.stats`, in the order of its columns.
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

/// Every counter, indexed by [`Counter`].
struct Counters([AtomicU64; Counter::EventsDropped as usize + 1]);

static COUNTERS: Attached<Counters> = Attached::new();

/// The counters' part of shared memory.
pub const SHMEM: shmem::Part = shmem::Part {
    name: c"lease counters",
    bytes: || std::mem::size_of::<Counters>(),
    locks: 0,
    init: |memory, _| {
        // SAFETY: the part's memory, `bytes()` long; zero is every counter's start.
        unsafe { std::ptr::write_bytes(memory, 0, std::mem::size_of::<Counters>()) }
    },
    attach: |memory| COUNTERS.set(memory),
};

pub fn add(counter: Counter, amount: u64) {
    if let Some(counters) = COUNTERS.get() {
        counters.0[counter as usize].fetch_add(amount, Ordering::Relaxed);
    }
}

/// A counter's value (0 without shared memory).
fn read(counter: Counter) -> i64 {
    COUNTERS.get().map_or(0, |counters| counters.0[counter as usize].load(Ordering::Relaxed) as i64)
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
    use Counter::*;
    TableIterator::once((
        read(Acquired),
        read(Reacquired),
        read(Conflicts),
        read(Renewed),
        read(Released),
        read(ExpiredTtl),
        read(ExpiredSessionEnd),
        read(Revoked),
        read(Waits),
        read(WaitMicros) as f64 / 1e6,
        read(Handovers),
        read(EventsDropped),
    ))
}

/// Sets the counters of `lease.stats` back to zero. Not executable by PUBLIC.
#[pg_extern(sql = false)]
fn lease_stats_reset() {
    if let Some(counters) = COUNTERS.get() {
        for counter in &counters.0 {
            counter.store(0, Ordering::Relaxed);
        }
    }
}
