//! Expiry: removing leases whose time is up, and announcing each one as `expired`.
//!
//! Correctness never waits for this (an expired lease is already free to the next acquire);
//! the sweep only turns expiry into an event and keeps the table small. [`sweep`] is the one
//! function that does it: `lease_sweep()` calls it from SQL and the expiry worker schedules it.
//!
//! Leases attached to a lifeline end with it: a lapsed lifeline's leases are removed and
//! announced (reason `lifeline_expired`), and then the lifeline itself.
//!
//! Uses vocabulary, barrier, store, events, session and lifeline.

use crate::barrier::{self, LifelineMode};
use crate::events::{self, Event, Kind, Reason};
use crate::lifeline;
use crate::store::{Listed, Store};
use crate::vocabulary::{clock_now, Timestamp};
use crate::{session, settings};

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

/// Removes up to `limit` expired leases, earliest first, and then, within the same `limit`,
/// leases of lapsed lifelines, in the current transaction (a lifeline with more leases than
/// that is ended over several sweeps).
///
/// Each lease is removed only under its resource's barrier lock, taken without waiting (a
/// resource whose fence or change is in progress is skipped and counted as busy), and only if
/// it is still the same grant and still expired by a clock read after the lock: a renew or a
/// takeover that committed first wins, and a takeover already announced the old token's end.
pub fn sweep(limit: i64) -> Sweep {
    let store = Store::open();
    let candidates = store.expired_candidates(clock_now(), limit);
    let mut outcome = Sweep { found: candidates.len() as i64, ..Sweep::default() };
    for Listed { resource, token, slot, mode } in candidates {
        let Some(held) = barrier::lock_row_change(&resource, slot, mode.kind(), true) else {
            outcome.busy += 1;
            continue;
        };
        let now = clock_now();
        match store.delete_expired(&resource, token, now) {
            Some(lease) => {
                let expires_at = Some(lease.expires_at);
                events::record(
                    Event::of(Kind::Expired, &resource, &lease, expires_at, now).because(Reason::Ttl),
                );
                outcome.removed += 1;
            }
            // Renewed or taken over meanwhile: keep out nobody for the rest of the transaction.
            None => held.release_if_unused_before(),
        }
    }
    if store.shape().has_lifelines() && outcome.found < limit {
        for id in store.lapsed_lifelines(clock_now(), limit - outcome.found) {
            let budget = limit - outcome.found;
            if budget <= 0 {
                break;
            }
            outcome.add(end_lifeline(&store, id, budget));
        }
    }
    outcome
}

impl Sweep {
    fn add(&mut self, other: Sweep) {
        self.found += other.found;
        self.removed += other.removed;
        self.busy += other.busy;
    }
}

/// Removes up to `budget` leases of the lifeline `id` if it has lapsed, announcing each as
/// `expired` (reason `lifeline_expired`), and then, once none is left, the lifeline. Its locks
/// and each lease's are only tried: what is busy is counted and left for the next sweep (with
/// the lifeline). Counts each lease it found (at least one for the lifeline itself).
fn end_lifeline(store: &Store, id: i64, budget: i64) -> Sweep {
    let mut outcome = Sweep { found: 1, ..Sweep::default() };
    let locks = barrier::lock_lifeline(id, LifelineMode::End, true)
        .and_then(|end| Some((end, barrier::lock_lifeline(id, LifelineMode::Lapse, true)?)));
    let Some((end, lapse)) = locks else {
        outcome.busy += 1;
        return outcome;
    };
    // Decided again under the locks: a renewal may have committed meanwhile. A confirmed lapse
    // is final, so the locks are given back at once: waiters and other holders may take the
    // leases over meanwhile (each removal below is decided under its resource's lock).
    let lifeline = store.lifeline(id).filter(|lifeline| lifeline::lapsed(id, lifeline, clock_now()));
    lapse.release_if_unused_before();
    end.release_if_unused_before();
    let Some(lifeline) = lifeline else {
        outcome.found = 0;
        return outcome;
    };
    let ended_at = lifeline.expires_at.min(clock_now());
    // One more than the budget tells whether any will be left.
    let attached = store.attached(id, budget.saturating_add(1));
    let left = attached.len() as i64 - budget;
    outcome.found = budget.min(attached.len() as i64).max(1);
    for Listed { resource, token, slot, mode } in attached.into_iter().take(budget as usize) {
        let Some(lock) = barrier::lock_row_change(&resource, slot, mode.kind(), true) else {
            outcome.busy += 1;
            continue;
        };
        store.ensure_snapshot_current(&resource);
        let now = clock_now();
        // Only if still attached: it may have been re-acquired or kept since it was listed.
        match store.delete_attached(&resource, token, id) {
            Some(lease) => {
                let event = Event::of(Kind::Expired, &resource, &lease, Some(ended_at), now);
                events::record(event.because(Reason::LifelineExpired));
                outcome.removed += 1;
            }
            None => lock.release_if_unused_before(),
        }
    }
    match (outcome.busy, left) {
        // The lifeline's row is deleted under its membership lock, taken again and kept: another
        // sweep of the same lifeline (in an open transaction) must not wait for this one's row.
        (0, ..=0) => match barrier::lock_lifeline(id, LifelineMode::End, true) {
            Some(_kept) => {
                store.delete_lifeline(id);
                session::unbind_at_commit(id);
            }
            None => outcome.busy += 1,
        },
        // More leases than this sweep may take: the next sweep goes on (soon, like a busy one).
        (0, _) => outcome.busy += 1,
        _ => {}
    }
    outcome
}

/// Expires every session-bound lease whose holder's session has ended (its session lock is
/// free), announcing each as `expired` with reason `session_ended`; and the leases of every
/// lifeline bound to a session that ended.
pub fn sweep_ended_sessions() -> Sweep {
    let store = Store::open();
    let mut outcome = Sweep::default();
    if store.shape().has_lifelines() {
        for id in store.session_bound_lifelines() {
            if session::lifeline_holder_is_gone(id) {
                outcome.add(end_lifeline(&store, id, settings::expire_batch()));
            }
        }
    }
    for Listed { resource, token, slot, mode } in store.session_bound() {
        if !session::holder_is_gone(token) {
            continue;
        }
        outcome.found += 1;
        let Some(held) = barrier::lock_row_change(&resource, slot, mode.kind(), true) else {
            outcome.busy += 1;
            continue;
        };
        match store.delete_grant(&resource, token) {
            Some(lease) => {
                let (expires_at, at) = (Some(lease.expires_at), clock_now());
                events::record(
                    Event::of(Kind::Expired, &resource, &lease, expires_at, at).because(Reason::SessionEnded),
                );
                outcome.removed += 1;
            }
            None => held.release_if_unused_before(),
        }
    }
    outcome
}

/// The earliest expiry of any lease or lifeline, if there is one.
pub fn next_expiry() -> Option<Timestamp> {
    Store::open().next_expiry()
}
