//! Writing what an attempt decided: a new grant (or a takeover) at a slot, the caller's
//! extension of its own lease, and the removal of ended shared leases or permits that an
//! exclusive grant replaces.
//!
//! Uses the attempt's facts, and barrier, store, session, events and stats.

use crate::barrier::{self, Mode};
use crate::errors::LeaseError;
use crate::events::{self, Event, Kind, Reason};
use crate::session;
use crate::store::{Lease, LeaseMode, NewGrant, Shape, Store};
use crate::vocabulary::Timestamp;

use super::attempt::{confirm_lapse, ended, Attempt};
use super::Request;

/// Removes the rows among `others`, none holding any more, that a grant relies on having ended
/// (for an exclusive grant, every shared lease or permit: see `attempt::others_hold`; for a
/// shared lease or a permit, the exclusive lease and the rows of the other kind or above the
/// capacity), each under its own lock (tried: false, nothing more done, when one is busy, as
/// when a fence of it is in progress), announcing each as expired before the grant.
pub(super) fn remove_ended(store: &Store, request: &Request, others: Vec<Lease>, now: Timestamp) -> bool {
    let resource = request.resource;
    for other in others {
        // An ended exclusive lease (slot 0), removed by a shared or permit grant, which holds the
        // resource's lock in join mode only: one such grant at a time removes it.
        let lock = match other.slot {
            0 => barrier::try_lock_removal(resource),
            slot => barrier::try_lock_slot(resource, slot, Mode::Change),
        };
        let Some(lock) = lock else { return false };
        // Under its lock: it may have been renewed or removed meanwhile.
        let (lease, reason) = match confirm_lapse(store, request, store.row_of(resource, other.token), now) {
            Some(None) => {
                lock.release_if_unused_before();
                continue;
            }
            Some(Some(lease)) => match ended(&lease, now, request) {
                Some(reason) => (lease, reason),
                None => {
                    lock.release_if_unused_before();
                    return false;
                }
            },
            None => {
                lock.release_if_unused_before();
                return false;
            }
        };
        store.ensure_snapshot_current(resource);
        if let Some(removed) = store.delete_grant(resource, lease.token) {
            let ended_at =
                if reason == Reason::LifelineExpired { lease.expires_at.min(now) } else { lease.expires_at };
            let removed = Lease {
                expires_at: lease.expires_at,
                lifeline: lease.lifeline,
                capacity: lease.capacity,
                ..removed
            };
            events::record(Event::of(Kind::Expired, resource, &removed, Some(ended_at), now).because(reason));
            session::unbind_at_commit(lease.token);
        }
    }
    true
}

/// A new grant of `request.resource` at `slot` (0 for an exclusive lease), in the caller's
/// mode, replacing the row `ended` (that ended for that reason) if there is one. The caller
/// holds the row's lock in [`Mode::Change`] (and the resource's lock the mode needs).
pub(super) fn grant_at(
    store: &Store,
    request: &Request,
    slot: i32,
    ended: Option<(Reason, &Lease)>,
    now: Timestamp,
) -> Attempt {
    let resource = request.resource;
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
        slot,
        mode: request.mode,
        capacity: request.capacity,
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
    prove(request);
    events::record_change(Kind::Acquired, resource, &grant.lease(), Some(expires_at), now);
    Attempt::Granted(token)
}

/// An exclusive lease's grant or extension proves the resource for `lease_fence`; a shared
/// lease or a permit does not (writes under `lease_fence` need the exclusive lease).
fn prove(request: &Request) {
    if request.mode == LeaseMode::Exclusive {
        barrier::prove(request.resource);
    }
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
pub(super) fn extend(store: &Store, request: &Request, lease: &Lease, now: Timestamp) -> Option<Attempt> {
    let resource = request.resource;
    store.ensure_snapshot_current(resource);
    let (own_expiry, expires_at) = expiries(request, now);
    let extended = match store.shape() {
        Shape::Classic => store.extend(resource, lease.token, now, own_expiry)?,
        Shape::Lifelines | Shape::Slotted => {
            let lifeline = request.lifeline.as_ref().map(|(id, _)| *id);
            store.reacquire(resource, lease.token, now, own_expiry, lifeline, request.data)?
        }
    };
    let extended = Lease { capacity: request.capacity.or(lease.capacity), ..extended };
    if request.session_bound && !session::is_bound_here(lease.token) {
        if !session::bind(store, lease.token) {
            LeaseError::BoundElsewhere { resource: resource.into() }.raise();
        }
        let application_name = session::application_name();
        store.bind(resource, lease.token, session::this_session(&application_name));
    }
    prove(request);
    events::record_change(Kind::Renewed, resource, &extended, Some(expires_at), now);
    Some(Attempt::Extended(lease.token))
}
