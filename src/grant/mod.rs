//! Acquiring leases: `lease_acquire` (with waiting), `lease_acquire_any` and
//! `lease_acquire_all` (all or nothing, with waiting).
//!
//! Every attempt takes the resource's barrier lock ([`crate::barrier`]) before it decides,
//! reads the clock after the lock, and decides on the row as it is once locked ([`decision`],
//! pure); [`attempt`] gathers the facts and applies the decision; [`wait`] queues a call that
//! may wait. Expiry is always decided by a clock read after the lock.
//!
//! Uses vocabulary, errors, stats, barrier, subtransaction, store, events, session, waiting.

use std::cell::Cell;

use pgrx::pg_sys;

use crate::barrier::{self, Mode};
use crate::errors::LeaseResult;
use crate::lifeline;
use crate::stats::{self, Counter};
use crate::store::{LeaseMode, Store};
use crate::subtransaction;
use crate::vocabulary::{clock_now, Timestamp};
use crate::waiting::Place;

mod attempt;
pub mod decision;
mod join;
mod wait;
mod write;

use attempt::{attempt_each, attempt_holding, attempt_now, attempt_while_busy, Attempt, HeldAll};
use wait::Waited;

/// What an acquire asks for, validated.
pub struct Request<'a> {
    pub resource: &'a str,
    pub holder: &'a str,
    /// Microseconds, positive (unused with a lifeline).
    pub ttl: i64,
    pub session_bound: bool,
    /// Grant only if there is no lease row at all: no expired lease taken over, no lease of
    /// the caller's extended.
    pub only_if_free: bool,
    /// The lifeline to attach the lease to, and its expiry as last found live
    /// ([`crate::lifeline::use_for_attach`], set by the attempt).
    pub lifeline: Option<(i64, Cell<Timestamp>)>,
    pub data: Option<&'a serde_json::Value>,
    /// Exclusive, shared, or a permit.
    pub mode: LeaseMode,
    /// For a permit: the capacity the call states (the resource's declared capacity governs).
    pub capacity: Option<i32>,
}

/// `lease_acquire`: the token, or None when another holder has the lease (or waiters are owed
/// it) and `wait` microseconds passed without it being granted.
pub fn acquire(request: &Request, wait: i64) -> LeaseResult<Option<i64>> {
    // First as a call that does not wait: a holder's re-acquire of its own lease, and a free
    // lease nobody queues for, are answered at once.
    let token = if wait == 0 {
        counted(attempt_now(&Store::open(), request, None, true)).token()
    } else {
        // In a subtransaction, as every attempt of a wait: a waiter keeps no lock while it sleeps.
        match counted(wait::in_subtransaction(|| attempt_now(&Store::open(), request, None, false))).token() {
            Some(token) => Some(token),
            None => wait::wait_for(
                &[request.resource],
                (request.mode == LeaseMode::Shared, &Vec::new),
                wait,
                |ticket| {
                    Waited::of(counted(wait::in_subtransaction(|| {
                        attempt_now(&Store::open(), request, Some(ticket), false)
                    })))
                },
            )?,
        }
    };
    if token.is_none() {
        stats::add(Counter::Conflicts, 1);
    }
    Ok(token)
}

/// `lease_acquire_any`: takes up to `max_count` of `candidates` (validated, possibly with
/// duplicates) for the claim's holder, as `claim` asks (its resource unused), in order, never
/// waiting; returns each with its token. With `only_if_free` (`snapshot_consistent`), only
/// resources without a lease row whose lease has not changed since the calling statement's
/// snapshot are taken.
pub fn acquire_any(
    candidates: &[&str],
    claim: &Request,
    max_count: usize,
) -> LeaseResult<Vec<(String, i64)>> {
    let store = Store::open();
    // The lifeline is taken for use once, for the whole claim; while it is ending, nothing can
    // be claimed for it.
    let mut membership = None;
    if let Some((id, expires_at)) = &claim.lifeline {
        let Some((taken, found)) = lifeline::use_for_attach(&store, *id, false)? else {
            return Ok(Vec::new());
        };
        expires_at.set(found.expires_at);
        membership = Some(taken);
    }
    let holder = claim.holder;
    // Candidates someone else holds are skipped without taking their lock. The test is a hint;
    // each grant is decided under the lock. (A resource with other holders may still take a
    // shared lease or a permit: those are all tried.)
    let exclusive = claim.mode == LeaseMode::Exclusive;
    let mut leased_to_others: Box<dyn FnMut(&str) -> bool> = match exclusive {
        true => store.leased_to_others(candidates, holder, clock_now()),
        false => Box::new(|_| false),
    };
    // Duplicates are taken once: a name is looked at only the first time it comes.
    let mut seen = std::collections::HashSet::new();
    let mut granted = Vec::new();
    for &resource in candidates {
        // A pending cancel or timeout ends a long claim here; abort releases what it holds.
        pg_sys::check_for_interrupts!();
        if !seen.insert(resource) || leased_to_others(resource) {
            continue;
        }
        let request = Request { resource, ..claim.clone() };
        let outcome = if !exclusive {
            join::attempt(&store, &request, None, false)
        } else {
            match barrier::try_lock(resource, Mode::Change) {
                Some(taken) if claim.only_if_free && store.changed_since_snapshot(resource) => {
                    taken.release_if_unused_before();
                    continue;
                }
                Some(taken) => attempt_holding(taken, &store, &request, None),
                // Being changed or fenced by another transaction right now (most likely another
                // claimer): skipped, unless it is the caller's own live lease and only fences
                // stand in the way, as for lease_acquire.
                None => attempt_while_busy(&store, &request, None, None, false),
            }
        };
        if let Some(token) = counted(outcome).token() {
            granted.push((resource.to_owned(), token));
            if granted.len() == max_count {
                break;
            }
        }
    }
    if let (Some(taken), true) = (membership, granted.is_empty()) {
        taken.release_if_unused_before();
    }
    Ok(granted)
}

/// `lease_acquire_all`: every one of `resources` (distinct, at most [`crate::waiting::MAX_KEYS`]
/// when it may wait) for the claim's holder, as `claim` asks (its resource unused), each with
/// its token in the order given; or None, holding none of them, when some are held by others
/// (or owed to waiters) and `wait` microseconds passed. Each attempt takes all of them in one
/// subtransaction, kept only when it got every one, so a claim never holds some while it waits
/// for the rest, and since it only ever tries locks, claims cannot deadlock whatever the order
/// of their lists. A waiting claim queues once, in the queue of every resource it names.
pub fn acquire_all(
    resources: &[&str],
    claim: &Request,
    wait: i64,
) -> LeaseResult<Option<Vec<(String, i64)>>> {
    let attempt = |ticket: Option<Place>, patient: bool| {
        subtransaction::in_subtransaction(
            || attempt_each(&Store::open(), resources, claim, ticket, patient),
            Result::is_ok,
        )
    };
    let held = match attempt(None, wait == 0) {
        Ok(HeldAll { tokens, extended, .. }) => {
            stats::add(Counter::Reacquired, extended);
            Some(tokens)
        }
        Err(_) if wait == 0 => None,
        Err(_) => {
            // What the caller holds can only end while it waits (its attempts are rolled back):
            // asked again before each look, while it holds any.
            let holds_any = std::cell::Cell::new(true);
            let held_now = || match holds_any.get() {
                false => Vec::new(),
                true => {
                    let held = held_by_caller(resources, claim);
                    holds_any.set(!held.is_empty());
                    held
                }
            };
            wait::wait_for(resources, (false, &held_now), wait, |ticket| {
                match attempt(Some(ticket), false) {
                    Ok(HeldAll { tokens, granted, extended }) => {
                        stats::add(Counter::Reacquired, extended);
                        Waited::Held { value: tokens, handover: granted }
                    }
                    Err(not_held) => Waited::again(&not_held),
                }
            })?
        }
    };
    if held.is_none() {
        stats::add(Counter::Conflicts, 1);
    }
    Ok(held)
}

/// The lock keys of `resources` whose live lease the caller holds now (as far as the rows and
/// the session locks tell): a waiting claim does not give way to waiters for them, who wait for
/// the caller (the two would otherwise wait for each other until one wait ran out).
fn held_by_caller(resources: &[&str], claim: &Request) -> Vec<u64> {
    let store = Store::open();
    let now = clock_now();
    let own = |resource: &str| {
        store.current(resource).is_some_and(|lease| {
            lease.holder == claim.holder
                && lease.owner == store.caller()
                && !lease.released
                && attempt::ended(&lease, now, claim).is_none()
        })
    };
    resources
        .iter()
        .filter(|resource| own(resource))
        .map(|resource| barrier::resource_key(resource))
        .collect()
}

impl Clone for Request<'_> {
    fn clone(&self) -> Self {
        Request {
            lifeline: self.lifeline.as_ref().map(|(id, expires_at)| (*id, Cell::new(expires_at.get()))),
            ..*self
        }
    }
}

/// Counts the outcome of an attempt that the call keeps: the caller's own lease extended is a
/// re-acquire.
fn counted(outcome: Attempt) -> Attempt {
    if let Attempt::Extended(_) = outcome {
        stats::add(Counter::Reacquired, 1);
    }
    outcome
}

impl Attempt {
    /// The token the caller holds after the attempt, if it does.
    fn token(&self) -> Option<i64> {
        match *self {
            Attempt::Granted(token) | Attempt::Extended(token) => Some(token),
            _ => None,
        }
    }
}
