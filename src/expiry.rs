//! Expiry: removing leases whose time is up, and announcing each one as `expired`.
//!
//! Correctness never waits for this (an expired lease is already free to the next acquire);
//! the sweep only turns expiry into an event and keeps the table small. [`sweep`] is the one
//! function that does it: `lease_sweep()` calls it from SQL and the expiry worker schedules it.
//!
//! Uses vocabulary, barrier, store, events and session.

use crate::barrier;
use crate::events::{self, Event, Reason};
use crate::session;
use crate::store::Store;
use crate::vocabulary::{clock_now, Timestamp};

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Expired leases found (at most the limit).
    pub found: i64,
    /// Leases removed and announced.
    pub removed: i64,
    /// Leases left for later because a fence or a change of the resource was in progress.
    pub busy: i64,
}

/// Removes up to `limit` expired leases, earliest first, in the current transaction.
///
/// Each lease is removed only under its resource's barrier lock, taken without waiting (a
/// resource whose fence or change is in progress is skipped and counted as busy), and only if
/// it is still the same grant and still expired by a clock read after the lock: a renew or a
/// takeover that committed first wins, and a takeover already announced the old token's end.
pub fn sweep(limit: i64) -> Sweep {
    let store = Store::open();
    let candidates = store.expired_candidates(clock_now(), limit);
    let mut outcome = Sweep { found: candidates.len() as i64, ..Sweep::default() };
    for (resource, token) in candidates {
        let Some(held) = barrier::try_lock(&resource, barrier::Mode::Change) else {
            outcome.busy += 1;
            continue;
        };
        let now = clock_now();
        match store.delete_expired(&resource, token, now) {
            Some((holder, expires_at)) => {
                events::record(Event::expired(Reason::Ttl, resource, holder, token, expires_at, now));
                outcome.removed += 1;
            }
            // Renewed or taken over meanwhile: keep out nobody for the rest of the transaction.
            None => held.release_if_unused_before(),
        }
    }
    outcome
}

/// Expires every session-bound lease whose holder's session has ended (its session lock is
/// free), announcing each as `expired` with reason `session_ended`.
pub fn sweep_ended_sessions() -> Sweep {
    let store = Store::open();
    let mut outcome = Sweep::default();
    for (resource, token) in store.session_bound() {
        if !session::holder_is_gone(token) {
            continue;
        }
        outcome.found += 1;
        let Some(held) = barrier::try_lock(&resource, barrier::Mode::Change) else {
            outcome.busy += 1;
            continue;
        };
        match store.delete_grant(&resource, token) {
            Some((holder, expires_at)) => {
                let at = clock_now();
                events::record(Event::expired(Reason::SessionEnded, resource, holder, token, expires_at, at));
                outcome.removed += 1;
            }
            None => held.release_if_unused_before(),
        }
    }
    outcome
}

/// The earliest expiry of any lease, if there is one.
pub fn next_expiry() -> Option<Timestamp> {
    Store::open().next_expiry()
}
