//! One attempt to acquire: take the resource's barrier lock, gather the facts, decide
//! ([`super::decision`]) and apply the decision.
//!
//! Uses the decision, and barrier, store, session, waiting, events and stats to apply it.

use crate::barrier::{self, LifelineMode, Mode, Taken};
use crate::errors::{LeaseError, OrRaise};
use crate::events::{self, Event, Kind, Reason};
use crate::lifeline;
use crate::session;
use crate::stats::{self, Counter};
use crate::store::{Attachment, Lease, NewGrant, Shape, Store};
use crate::vocabulary::{clock_now, Timestamp};
use crate::waiting;

use super::decision::{decide, Asking, Decision, Found};
use super::Request;

/// How many times (a millisecond apart) an acquire tries again for a lock that another
/// transaction holds, unless the lease is another holder's: long enough for a sweep's removal or
/// another acquirer's refused attempt, short enough to answer at once for a long fence.
const BUSY_RETRIES: usize = 10;

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
fn confirm_lapse(
    store: &Store,
    request: &Request,
    lease: Option<Lease>,
    now: Timestamp,
) -> Option<Option<Lease>> {
    let Some(Attachment { id, .. }) = lease.as_ref().and_then(|lease| lease.lifeline) else {
        return Some(lease);
    };
    let found = lease.as_ref().map(|lease| facts(lease, now, request));
    if decide(found.as_ref(), now, &request.asking(store), false)
        != Decision::TakeOver(Reason::LifelineExpired)
    {
        return Some(lease);
    }
    let lapse = barrier::lock_lifeline(id, LifelineMode::Lapse, true)?;
    let lease = store.current(request.resource);
    lapse.release_if_unused_before();
    Some(lease)
}

/// What a read without the resource's lock shows of its lease: a hint (never [`Decision::Yield`]),
/// decided again under the lock.
fn look(store: &Store, request: &Request) -> Decision {
    let lease = store.current(request.resource);
    let now = clock_now();
    let found = lease.as_ref().map(|lease| facts(lease, now, request));
    decide(found.as_ref(), now, &request.asking(store), false)
}

/// One attempt that never waits for another transaction: with the resource's lock free, it
/// decides as usual; while another transaction holds the lock, see [`attempt_while_busy`]
/// (`patient`: a call that does not wait; a waiting call looks again on its own schedule, so
/// that it never overruns its wait by more than one quick attempt).
pub(super) fn attempt_now(store: &Store, request: &Request, ticket: Option<u64>, patient: bool) -> Attempt {
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
}

/// One attempt at every one of `resources` (distinct) for `claim` (its resource unused), in
/// order, the lifeline taken for use once: what it holds, or the outcome of the first resource
/// it did not get, at which it stops. The caller runs it in a subtransaction that it rolls back
/// unless every resource was got, so that nothing is held of a claim that failed.
pub(super) fn attempt_each(
    store: &Store,
    resources: &[&str],
    claim: &Request,
    ticket: Option<u64>,
    patient: bool,
) -> Result<HeldAll, Attempt> {
    if let Some((id, expires_at)) = &claim.lifeline {
        // Kept with the grants (the subtransaction's rollback gives it back otherwise).
        let Some((_taken, found)) = lifeline::use_for_attach(store, *id, patient).or_raise() else {
            return Err(Attempt::Busy);
        };
        expires_at.set(found.expires_at);
    }
    let mut held = HeldAll { tokens: Vec::with_capacity(resources.len()), granted: false };
    for &resource in resources {
        // A pending cancel or timeout ends a long claim here; the rollback gives back its locks.
        pgrx::pg_sys::check_for_interrupts!();
        let request = Request { resource, ..claim.clone() };
        match attempt_resource(store, &request, ticket, patient) {
            Attempt::Granted(token) => {
                held.granted = true;
                held.tokens.push((resource.to_owned(), token));
            }
            Attempt::Extended(token) => held.tokens.push((resource.to_owned(), token)),
            not_held => return Err(not_held),
        }
    }
    Ok(held)
}

fn attempt_resource(store: &Store, request: &Request, ticket: Option<u64>, patient: bool) -> Attempt {
    // While anyone waits, a call that cannot win must not take the lock even for a moment: a
    // waiter at the head of its queue that found it busy would sleep again. (Without waiters the
    // lock is tried first, which saves a free grant a second read.)
    let hint = waiting::anyone_waits().then(|| look(store, request));
    match hint {
        Some(Decision::Refuse { until }) => return Attempt::Refused(until),
        Some(Decision::Insert | Decision::TakeOver(_))
            if ticket.is_none() && waiting::must_yield(request.resource, None) =>
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
    ticket: Option<u64>,
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
    ticket: Option<u64>,
) -> Attempt {
    let waiters_first = waiting::must_yield(request.resource, ticket);
    let now = clock_now();
    let Some(lease) = confirm_lapse(store, request, store.current(request.resource), now) else {
        taken.release_if_unused_before();
        return Attempt::Busy;
    };
    let found = lease.as_ref().map(|lease| facts(lease, now, request));
    let decision = decide(found.as_ref(), now, &request.asking(store), waiters_first);
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
    let resource = request.resource;
    let ended = match (decision, lease) {
        (Decision::Refuse { until }, _) => return Attempt::Refused(until),
        (Decision::Yield, _) => return Attempt::Yielded,
        (Decision::Extend, Some(lease)) => {
            return extend(store, request, lease, now).unwrap_or(Attempt::Refused(lease.expires_at))
        }
        (Decision::TakeOver(reason), Some(lease)) => Some((reason, lease)),
        _ => None, // Insert
    };
    store.ensure_snapshot_current(resource);
    // A token is taken only now, so a refused call uses up no token number.
    let token = store.next_token();
    let application_name = if request.session_bound { session::application_name() } else { String::new() };
    let (own_expiry, expires_at) = expiries(request, now);
    let grant = NewGrant {
        resource,
        holder: request.holder,
        token,
        owner: store.caller(),
        at: now,
        expires_at: own_expiry,
        binding: request.session_bound.then(|| session::this_session(&application_name)),
        lifeline: request.lifeline.as_ref().map(|(id, _)| *id),
        data: request.data,
    };
    let written = match ended {
        None => store.insert(&grant),
        Some((_, lease)) => store.take_over(lease.token, &grant),
    };
    if !written {
        // Under our lock a row can appear (or change) only to an older snapshot, and then the
        // statement has raised a serialization failure already.
        return Attempt::Refused(now);
    }
    if let Some((reason, lease)) = ended {
        // Not swept yet: announce the old token's end before the new grant.
        // A lifeline bound to a session that ended, before its expiry, ended when that was seen.
        let ended_at =
            if reason == Reason::LifelineExpired { lease.expires_at.min(now) } else { lease.expires_at };
        events::record(Event::of(Kind::Expired, resource, lease, Some(ended_at), now).because(reason));
    }
    if request.session_bound && !session::bind(store, token) {
        // A new token's session lock is nobody's but ours.
        pgrx::error!("lease: could not take the session lock of a new lease");
    }
    barrier::prove(resource);
    events::record_change(Kind::Acquired, resource, &grant.lease(), Some(expires_at), now);
    Attempt::Granted(token)
}

/// The expiry a lease granted or extended at `now` gets in its row (the end of time when it is
/// attached to a lifeline, whose expiry it shares) and the one it has.
fn expiries(request: &Request, now: Timestamp) -> (Timestamp, Timestamp) {
    match &request.lifeline {
        Some((_, lifeline_expires_at)) => (Timestamp::MAX, lifeline_expires_at.get()),
        None => (now + request.ttl, now + request.ttl),
    }
}

/// The caller's re-acquire of its own live `lease`: moves the expiry to `now` + ttl and keeps
/// the token; None if the statement finds the lease no longer the caller's. The caller holds
/// the resource's lock in [`Mode::Change`] or [`Mode::Extend`]. With `session_bound`, a lease
/// not bound yet is bound to this session; one bound to another live session raises 55006.
fn extend(store: &Store, request: &Request, lease: &Lease, now: Timestamp) -> Option<Attempt> {
    let resource = request.resource;
    store.ensure_snapshot_current(resource);
    let (own_expiry, expires_at) = expiries(request, now);
    let extended = match store.shape() {
        Shape::Classic => store.extend(resource, lease.token, now, own_expiry)?,
        Shape::Current => {
            let lifeline = request.lifeline.as_ref().map(|(id, _)| *id);
            store.reacquire(resource, lease.token, now, own_expiry, lifeline, request.data)?
        }
    };
    if request.session_bound && !session::is_bound_here(lease.token) {
        if !session::bind(store, lease.token) {
            LeaseError::BoundElsewhere { resource: resource.into() }.raise();
        }
        let application_name = session::application_name();
        store.bind(resource, lease.token, session::this_session(&application_name));
    }
    barrier::prove(resource);
    stats::add(Counter::Reacquired, 1);
    events::record_change(Kind::Renewed, resource, &extended, Some(expires_at), now);
    Some(Attempt::Extended(lease.token))
}
