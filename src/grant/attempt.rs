//! One attempt to acquire: take the resource's barrier lock, gather the facts, decide
//! ([`super::decision`]) and apply the decision.
//!
//! Uses the decision, and barrier, store, session, waiting, events and stats to apply it.

use crate::barrier::{self, LifelineMode, Mode, Taken};
use crate::errors::OrRaise;
use crate::events::Reason;
use crate::lifeline;
use crate::session;
use crate::store::{Attachment, Lease, LeaseMode, Store};
use crate::vocabulary::{clock_now, Timestamp};
use crate::waiting::{self, Place};

use super::decision::{decide, Asking, Decision, Found};
use super::write::{extend, grant_at, remove_ended};
use super::Request;

/// How many times (a millisecond apart) an acquire tries again for a lock that another
/// transaction holds, unless the lease is another holder's: long enough for a sweep's removal or
/// another acquirer's refused attempt, short enough to answer at once for a long fence.
pub(super) const BUSY_RETRIES: usize = 10;

/// The outcome of one attempt to acquire.
pub(super) enum Attempt {
    /// A new grant, or a takeover: the resource stays locked in [`Mode::Change`].
    Granted(i64),
    /// The caller's own live lease, extended: the resource stays locked in [`Mode::Extend`].
    Extended(i64),
    /// Not granted: another holder's lease, until this time (server clock); or, when only a
    /// free resource would do, any lease row (until its expiry); or a write that found the row
    /// changed (until now).
    Refused(Timestamp),
    /// Free, but queued waiters come first.
    Yielded,
    /// Another transaction is changing, extending or fencing the resource right now, so the
    /// answer is not known without waiting for it.
    Busy,
}

impl Request<'_> {
    fn asking(&self, store: &Store) -> Asking<'_> {
        Asking { holder: self.holder, role: store.caller(), only_if_free: self.only_if_free }
    }
}

/// The facts the decision needs about `lease` at `now`. Whether the session of a session-bound
/// holder, or of a lifeline, ended is asked (a try-lock of its session lock, kept until the
/// transaction ends if free) only where the answer can matter: of a live lease, when more than
/// a free resource would do.
fn facts<'a>(lease: &'a Lease, now: Timestamp, request: &Request) -> Found<'a> {
    let ask = !request.only_if_free && lease.expires_at > now && !lease.released;
    let session_ended = ask && lease.session_bound && session::holder_is_gone(lease.token);
    let lifeline_ended = ask
        && lease.lifeline.is_some_and(|Attachment { id, session_bound }| {
            session_bound && session::lifeline_holder_is_gone(id)
        });
    Found {
        holder: &lease.holder,
        owner: lease.owner,
        expires_at: lease.expires_at,
        session_ended,
        attached: lease.lifeline.is_some(),
        lifeline_ended,
        released: lease.released,
    }
}

/// For a lease attached to a lifeline that looks lapsed: the lapse is confirmed under the
/// lifeline's renewal lock ([`LifelineMode::Lapse`], only tried: a renewal in progress makes
/// the resource busy), by reading the lease again, since a renewal may have committed just
/// before. A confirmed lapse is final, so the lock is given back at once (it would keep the
/// lifeline's renewals waiting). Returns the lease as found then, or None when the lock is
/// busy.
pub(super) fn confirm_lapse(
    store: &Store,
    request: &Request,
    lease: Option<Lease>,
    now: Timestamp,
) -> Option<Option<Lease>> {
    let Some((slot, Attachment { id, .. })) =
        lease.as_ref().and_then(|lease| Some((lease.slot, lease.lifeline?)))
    else {
        return Some(lease);
    };
    let found = lease.as_ref().map(|lease| facts(lease, now, request));
    if decide(found.as_ref(), now, &request.asking(store), false)
        != Decision::TakeOver(Reason::LifelineExpired)
    {
        return Some(lease);
    }
    let lapse = barrier::lock_lifeline(id, LifelineMode::Lapse, true)?;
    let lease = store.rows(request.resource).into_iter().find(|lease| lease.slot == slot);
    lapse.release_if_unused_before();
    Some(lease)
}

/// Why `lease` no longer holds its resource at `now` (None: it holds, or is kept after a
/// release until its expiry), as far as the row and the session locks tell.
pub(super) fn ended(lease: &Lease, now: Timestamp, request: &Request) -> Option<Reason> {
    let found = facts(lease, now, request);
    if found.expires_at <= now || found.lifeline_ended {
        return Some(if found.attached { Reason::LifelineExpired } else { Reason::Ttl });
    }
    found.session_ended.then_some(Reason::SessionEnded)
}

/// For an exclusive request: the earliest expiry of the shared leases or permits (slots 1 and
/// up) that still hold among `rows`, if any does; a free resource would have no row at all.
fn others_hold(rows: &[Lease], now: Timestamp, request: &Request) -> Option<Timestamp> {
    let others = rows.iter().filter(|lease| lease.slot != 0);
    let holding = others.filter(|lease| request.only_if_free || ended(lease, now, request).is_none());
    holding.map(|lease| lease.expires_at).min()
}

/// What a read without the resource's lock shows of its lease: a hint (never [`Decision::Yield`]),
/// decided again under the lock.
fn look(store: &Store, request: &Request) -> Decision {
    let rows = store.rows(request.resource);
    let now = clock_now();
    if let Some(until) = others_hold(&rows, now, request) {
        return Decision::Refuse { until };
    }
    let lease = rows.iter().find(|lease| lease.slot == 0);
    let found = lease.map(|lease| facts(lease, now, request));
    decide(found.as_ref(), now, &request.asking(store), false)
}

/// One attempt that never waits for another transaction: with the resource's lock free, it
/// decides as usual; while another transaction holds the lock, see [`attempt_while_busy`]
/// (`patient`: a call that does not wait; a waiting call looks again on its own schedule, so
/// that it never overruns its wait by more than one quick attempt).
pub(super) fn attempt_now(store: &Store, request: &Request, ticket: Option<Place>, patient: bool) -> Attempt {
    // The lifeline first (lifeline, then resource: see `crate::lifeline`); kept while the lease
    // is attached to it, given back otherwise.
    let lifeline = match &request.lifeline {
        None => None,
        Some((id, expires_at)) => match lifeline::use_for_attach(store, *id, patient).or_raise() {
            // The lifeline is ending right now: a waiting call looks again on its schedule.
            None => return Attempt::Busy,
            Some((taken, found)) => {
                expires_at.set(found.expires_at);
                Some(taken)
            }
        },
    };
    let outcome = attempt_resource(store, request, ticket, patient);
    if let (Some(taken), None) = (lifeline, outcome.token()) {
        taken.release_if_unused_before();
    }
    outcome
}

/// What [`attempt_each`] holds after an attempt that got every resource: each with its token,
/// in the order asked, and whether any of them was a new grant (not only the caller's own
/// lease extended).
pub(super) struct HeldAll {
    pub tokens: Vec<(String, i64)>,
    pub granted: bool,
    /// How many were the caller's own leases, extended.
    pub extended: u64,
}

/// One attempt at every one of `resources` (distinct) for `claim` (its resource unused), in
/// order, the lifeline taken for use once: what it holds, or the outcome of the first resource
/// it did not get, at which it stops. The caller runs it in a subtransaction that it rolls back
/// unless every resource was got, so that nothing is held of a claim that failed.
pub(super) fn attempt_each(
    store: &Store,
    resources: &[&str],
    claim: &Request,
    ticket: Option<Place>,
    patient: bool,
) -> Result<HeldAll, Attempt> {
    if let Some((id, expires_at)) = &claim.lifeline {
        // Kept with the grants (the subtransaction's rollback gives it back otherwise).
        let Some((_taken, found)) = lifeline::use_for_attach(store, *id, patient).or_raise() else {
            return Err(Attempt::Busy);
        };
        expires_at.set(found.expires_at);
    }
    let mut held = HeldAll { tokens: Vec::with_capacity(resources.len()), granted: false, extended: 0 };
    // The leases the caller held when it last looked come first: a waiter does not give way to
    // waiters for a lease it holds (they wait for it), but only once this attempt has found
    // that it still does, by extending it.
    let held_before = ticket.map_or(&[][..], |place| place.held);
    let (own, others): (Vec<&str>, Vec<&str>) = resources
        .iter()
        .copied()
        .partition(|resource| held_before.contains(&barrier::resource_key(resource)));
    let mut extended_keys = Vec::new();
    let mut tokens = std::collections::HashMap::with_capacity(resources.len());
    for (resource, own) in
        own.into_iter().map(|resource| (resource, true)).chain(others.into_iter().map(|r| (r, false)))
    {
        // A pending cancel or timeout ends a long claim here; the rollback gives back its locks.
        pgrx::pg_sys::check_for_interrupts!();
        let request = Request { resource, ..claim.clone() };
        let place =
            ticket.map(|place| Place { number: place.number, held: if own { &[] } else { &extended_keys } });
        match attempt_resource(store, &request, place, patient) {
            Attempt::Granted(token) => {
                held.granted = true;
                tokens.insert(resource, token);
            }
            Attempt::Extended(token) => {
                held.extended += 1;
                extended_keys.push(barrier::resource_key(resource));
                tokens.insert(resource, token);
            }
            not_held => return Err(not_held),
        }
    }
    held.tokens = resources.iter().map(|&resource| (resource.to_owned(), tokens[resource])).collect();
    Ok(held)
}

fn attempt_resource(store: &Store, request: &Request, ticket: Option<Place>, patient: bool) -> Attempt {
    if request.mode != LeaseMode::Exclusive {
        return super::join::attempt(store, request, ticket, patient);
    }
    // While anyone waits, a call that cannot win must not take the lock even for a moment: a
    // waiter at the head of its queue that found it busy would sleep again. (Without waiters the
    // lock is tried first, which saves a free grant a second read.)
    let hint = waiting::anyone_waits().then(|| look(store, request));
    match hint {
        Some(Decision::Refuse { until }) => return Attempt::Refused(until),
        Some(Decision::Insert | Decision::TakeOver(_))
            if ticket.is_none() && waiting::must_yield(request.resource, None, false) =>
        {
            return Attempt::Yielded
        }
        _ => {}
    }
    match barrier::try_lock(request.resource, Mode::Change) {
        Some(taken) => attempt_holding(taken, store, request, ticket),
        None => attempt_while_busy(store, request, hint, ticket, patient),
    }
}

/// The rest of [`attempt_now`] when another transaction holds the resource's lock (`hint`: the
/// read already made, if any). A lease another holder holds is refused at once. Otherwise the
/// lock is most likely held for a moment (the expiry worker removing the expired lease, another
/// acquirer's refused attempt): with `patient`, the call tries again, a millisecond apart, for
/// up to [`BUSY_RETRIES`] milliseconds (the caller's own live lease in [`Mode::Extend`], which
/// fences do not block) before it calls the resource busy. `lease_acquire_any` and a waiting
/// acquire are not patient: the first skips at once and the second looks again after a sleep,
/// except for the caller's own live lease, which is extended once the extend lock is free.
pub(super) fn attempt_while_busy(
    store: &Store,
    request: &Request,
    hint: Option<Decision>,
    ticket: Option<Place>,
    patient: bool,
) -> Attempt {
    let ours = match hint.unwrap_or_else(|| look(store, request)) {
        Decision::Refuse { until } => return Attempt::Refused(until),
        decision => decision == Decision::Extend,
    };
    if !patient && !ours {
        return Attempt::Busy;
    }
    let mode = if ours { Mode::Extend } else { Mode::Change };
    let Some(taken) = waiting::try_briefly(BUSY_RETRIES, || barrier::try_lock(request.resource, mode)) else {
        return Attempt::Busy;
    };
    if mode == Mode::Change {
        return attempt_holding(taken, store, request, ticket);
    }
    // Only an extension may be made under this lock.
    let now = clock_now();
    let ours = |lease: &Lease| lease.holder == request.holder && lease.owner == store.caller();
    let extended = store.current(request.resource).filter(ours).and_then(|lease| {
        let found = facts(&lease, now, request);
        let decision = decide(Some(&found), now, &request.asking(store), false);
        (decision == Decision::Extend).then(|| extend(store, request, &lease, now)).flatten()
    });
    extended.unwrap_or_else(|| {
        taken.release_if_unused_before();
        Attempt::Busy
    })
}

/// As [`attempt_now`], with the resource's lock taken in [`Mode::Change`].
pub(super) fn attempt_holding(
    taken: Taken,
    store: &Store,
    request: &Request,
    ticket: Option<Place>,
) -> Attempt {
    let waiters_first = waiting::must_yield(request.resource, ticket, false);
    let now = clock_now();
    let rows = store.rows(request.resource);
    // Shared leases or permits that still hold keep an exclusive lease out.
    if let Some(until) = others_hold(&rows, now, request) {
        taken.release_if_unused_before();
        return Attempt::Refused(until);
    }
    let (exclusive, others): (Vec<Lease>, Vec<Lease>) = rows.into_iter().partition(|lease| lease.slot == 0);
    let Some(lease) = confirm_lapse(store, request, exclusive.into_iter().next(), now) else {
        taken.release_if_unused_before();
        return Attempt::Busy;
    };
    let found = lease.as_ref().map(|lease| facts(lease, now, request));
    let decision = decide(found.as_ref(), now, &request.asking(store), waiters_first);
    // A grant also ends the shared leases or permits that ended but are still there.
    let granting = matches!(decision, Decision::Insert | Decision::TakeOver(_));
    if granting && !remove_ended(store, request, others, now) {
        taken.release_if_unused_before();
        return Attempt::Busy;
    }
    let outcome = apply(store, request, decision, lease.as_ref(), now);
    match outcome {
        Attempt::Granted(_) => {}
        // Only extended: fences need not wait for this transaction.
        Attempt::Extended(_) => taken.downgrade(Mode::Extend),
        // Nothing changed: do not keep others out for the rest of the transaction.
        _ => taken.release_if_unused_before(),
    }
    outcome
}

/// Carries out `decision` about `lease` (the row as found at `now`, under the change lock).
fn apply(
    store: &Store,
    request: &Request,
    decision: Decision,
    lease: Option<&Lease>,
    now: Timestamp,
) -> Attempt {
    let ended = match (decision, lease) {
        (Decision::Refuse { until }, _) => return Attempt::Refused(until),
        (Decision::Yield, _) => return Attempt::Yielded,
        (Decision::Extend, Some(lease)) => {
            return extend(store, request, lease, now).unwrap_or(Attempt::Refused(lease.expires_at))
        }
        (Decision::TakeOver(reason), Some(lease)) => Some((reason, lease)),
        _ => None, // Insert
    };
    grant_at(store, request, 0, ended, now)
}
