//! Waiting for leases: a queued acquire, first come first served ([`crate::waiting`]).
//!
//! Uses `attempt`, waiting, subtransaction and stats.

use pgrx::pg_sys;

use super::attempt::Attempt;
use crate::errors::{LeaseError, LeaseResult};
use crate::stats::{self, Counter};
use crate::subtransaction;
use crate::vocabulary::{clock_now, Timestamp};
use crate::waiting::{self, Place};

/// How soon a waiter looks again at a resource whose lock another transaction holds, if no
/// commit or abort wakes it first.
const BUSY_RETRY_MS: i64 = 5;

/// Counts a wait and, when it ends in any way, the time it took.
struct WaitClock(Timestamp);

impl Drop for WaitClock {
    fn drop(&mut self) {
        stats::add(Counter::WaitMicros, (clock_now() - self.0).max(0) as u64);
    }
}

/// What one attempt of a waiter gave.
pub(super) enum Waited<T> {
    /// Granted (`handover`: a grant, not only the caller's own lease extended).
    Held { value: T, handover: bool },
    /// Not yet: look again by this time (None: when woken or at the deadline).
    Again(Option<Timestamp>),
}

impl<T> Waited<T> {
    /// When to look again after an attempt that did not get a lease.
    pub(super) fn again(outcome: &Attempt) -> Self {
        match *outcome {
            Attempt::Refused(expires_at) => Waited::Again(Some(expires_at)),
            Attempt::Busy => Waited::Again(Some(clock_now() + BUSY_RETRY_MS * 1_000)),
            _ => Waited::Again(None),
        }
    }
}

impl Waited<i64> {
    /// What an attempt of `lease_acquire` gave a waiter.
    pub(super) fn of(outcome: Attempt) -> Self {
        match outcome {
            Attempt::Granted(token) => Waited::Held { value: token, handover: true },
            Attempt::Extended(token) => Waited::Held { value: token, handover: false },
            not_held => Waited::again(&not_held),
        }
    }
}

/// Queues for `resources` (one ticket in each of their queues; for a shared lease, `shared`;
/// `held` tells the lock keys of the leases the caller holds, asked before each look) until `attempt`, made only while
/// this waiter is the head of all of them, gives what it asked for, `wait` microseconds pass
/// (None), or `lock_timeout` passes first (55P03). Cancellation and `statement_timeout` raise
/// 57014. Whatever other transactions do, it returns within `wait` plus the time one attempt
/// takes: it never waits in the lock manager, only on its latch, which commits and aborts that
/// free one of the resources set, and which it sets itself every [`BUSY_RETRY_MS`] while
/// another transaction holds a resource's lock. `attempt` gets the ticket's number, runs in
/// its own subtransaction, and keeps it only when it gives something.
pub(super) fn wait_for<T>(
    resources: &[&str],
    (shared, held): (bool, &dyn Fn() -> Vec<u64>),
    wait: i64,
    mut attempt: impl FnMut(Place) -> Waited<T>,
) -> LeaseResult<Option<T>> {
    let ticket =
        waiting::enqueue(resources, shared).ok_or(LeaseError::NeedsPreload("waiting for a lease"))?;
    let start = clock_now();
    stats::add(Counter::Waits, 1);
    let _clock = WaitClock(start);
    let deadline = start.saturating_add(wait);
    // SAFETY: LockTimeout is the backend's lock_timeout setting, in milliseconds.
    let lock_timeout_ms = i64::from(unsafe { pg_sys::LockTimeout });
    let lock_deadline = if lock_timeout_ms > 0 { start + lock_timeout_ms * 1_000 } else { i64::MAX };
    // What an attempt allocates is freed after it: a long wait makes many attempts.
    let mut attempts = pgrx::PgMemoryContexts::new("lease wait");
    loop {
        let mut sleep_until = deadline.min(lock_deadline);
        // SAFETY: as for the attempt below; what `held` allocates there is freed at once (the
        // keys it returns are Rust's).
        let held = unsafe {
            let held = attempts.switch_to(|_| held());
            attempts.reset();
            held
        };
        if ticket.is_head(&held) {
            // The attempt of a waiter at the head of its queues: decided as a call without
            // `wait` decides, with its ticket. While another holder holds a lease it sleeps
            // without taking any lock, and it never queues in the lock manager, where an
            // exclusive request would hold up the holder's renewals and every fence behind it.
            // SAFETY: the context lives until the end of this function, and is reset only after
            // the attempt, whose outcome holds no pointer into it.
            let outcome = unsafe {
                let outcome = attempts.switch_to(|_| attempt(ticket.place(&held)));
                attempts.reset();
                outcome
            };
            match outcome {
                Waited::Held { value, handover } => {
                    if handover {
                        stats::add(Counter::Handovers, 1);
                    }
                    return Ok(Some(value));
                }
                Waited::Again(Some(until)) => sleep_until = sleep_until.min(until),
                Waited::Again(None) => {}
            }
        }
        let now = clock_now();
        if now >= deadline {
            return Ok(None);
        }
        if now >= lock_deadline {
            return Err(LeaseError::LockTimeout { resource: resources.join("\", \"") });
        }
        waiting::sleep((sleep_until - now + 999) / 1_000);
    }
}

/// Runs one attempt in an internal subtransaction that is kept if the lease was granted and
/// rolled back otherwise, so that a waiter holds no lock while it sleeps.
pub(super) fn in_subtransaction(attempt: impl FnOnce() -> Attempt) -> Attempt {
    subtransaction::in_subtransaction(attempt, |outcome| outcome.token().is_some())
}
