//! The calls a holder makes with its token: renew, release, and the fence (`lease_check`,
//! `lease_assert`, and the `lease_fence` trigger through them); and the administrator's
//! revocation. Each takes the resource's barrier lock in the mode of what it will do
//! ([`crate::barrier`]), reads the clock after the lock, and decides on the row as it is
//! once locked.
//!
//! Uses vocabulary, errors, barrier, store, events and session.

use pgrx::pg_sys;

use crate::barrier::{self, Mode, Taken};
use crate::errors::{LeaseError, LeaseResult};
use crate::events::{self, Event, Kind, Reason};
use crate::session;
use crate::store::{Lease, Store};
use crate::vocabulary::{clock_now, Timestamp};

/// `lease_renew`: moves the expiry of a held lease to now + `ttl`; false if `token` no longer
/// holds `resource`. A lease attached to a lifeline lives as long as the lifeline: renewing it
/// changes nothing and answers whether it holds.
pub fn renew(resource: &str, token: i64, ttl: i64) -> LeaseResult<bool> {
    // A renewal only makes the lease live longer: fences do not hold it up.
    let Some((taken, store)) = lock_if_held(resource, token, Mode::Extend)? else { return Ok(false) };
    let now = clock_now();
    let expires_at = now + ttl;
    let Some(lease) = store.extend(resource, token, now, expires_at) else {
        let attached = holds(&store, resource, token, now).filter(|lease| lease.lifeline.is_some());
        if let Some(lease) = attached {
            ensure_member(&store, resource, lease.owner)?;
            barrier::prove(resource);
            return Ok(true);
        }
        drop(store);
        taken.release_if_unused_before();
        return Ok(false);
    };
    ensure_member(&store, resource, lease.owner)?;
    barrier::prove(resource);
    events::record_change(Kind::Renewed, resource, &lease, Some(expires_at), now);
    Ok(true)
}

/// `lease_release`: ends a held lease; true once, false if `token` no longer holds `resource`.
/// With `keep_for` (microseconds), nobody (the holder included) may have the resource before
/// `acquired_at + keep_for`: the lease is kept, released, until then.
pub fn release(resource: &str, token: i64, keep_for: Option<i64>) -> LeaseResult<bool> {
    let Some((taken, store)) = lock_if_held(resource, token, Mode::Change)? else { return Ok(false) };
    let now = clock_now();
    let kept = keep_for.and_then(|keep_for| {
        let held = holds(&store, resource, token, now)?;
        let until = held.acquired_at.saturating_add(keep_for);
        let kept = (until > now).then(|| store.keep(resource, token, until, now)).flatten()?;
        // Its release is announced as the lease it was: attached to its lifeline, if it was.
        Some((Lease { lifeline: held.lifeline, ..kept }, until))
    });
    let (lease, kept_until) = match kept {
        Some((lease, until)) => (lease, Some(until)),
        None => match store.delete(resource, token, now) {
            Some(lease) => (lease, None),
            None => {
                // Held as last committed, but not to this transaction's older snapshot (the SQL
                // statement reads a lifeline's expiry through it).
                if store.transaction_snapshot() && store.holds(resource, token, now).is_some() {
                    return Err(LeaseError::SerializationFailure { resource: resource.into() });
                }
                drop(store);
                taken.release_if_unused_before();
                return Ok(false);
            }
        },
    };
    ensure_member(&store, resource, lease.owner)?;
    session::unbind_at_commit(token);
    let ended = lease
        .lifeline
        .filter(|lifeline| lifeline.session_bound && session::lifeline_holder_is_gone(lifeline.id));
    if kept_until.is_none() && ended.is_some() {
        // Attached to a lifeline whose session ended: the lease had ended already. Its row is
        // gone all the same, announced as what happened to it.
        let event =
            Event::of(Kind::Expired, resource, &lease, Some(now), now).because(Reason::LifelineExpired);
        events::record(event);
        return Ok(false);
    }
    barrier::prove(resource);
    events::record_change(Kind::Released, resource, &lease, kept_until, now);
    Ok(true)
}

/// `lease_set_data`: replaces the data of a held lease (fenced as a renewal is); false if
/// `token` no longer holds `resource`.
pub fn set_data(resource: &str, token: i64, data: Option<&serde_json::Value>) -> LeaseResult<bool> {
    let Some((taken, store)) = lock_if_held(resource, token, Mode::Extend)? else { return Ok(false) };
    let now = clock_now();
    let Some(lease) = holds(&store, resource, token, now) else {
        drop(store);
        taken.release_if_unused_before();
        return Ok(false);
    };
    ensure_member(&store, resource, lease.owner)?;
    store.set_data(resource, token, data);
    barrier::prove(resource);
    Ok(true)
}

/// For a renewal or a release: takes the resource's lock in `mode`, but queues for it only if
/// `token` holds the lease as last committed and the caller is a member of its owner role, so
/// that a call that cannot succeed never queues in the lock manager (where it would hold up the
/// requests behind it, the holder's own renewals among them); returns the lock and the store,
/// or None (the answer is false), or 42501. Under the lock the statement decides again. Under a
/// transaction-wide snapshot, a lease that changed since the snapshot is 40001: the statement
/// that would write it cannot see it.
fn lock_if_held(resource: &str, token: i64, mode: Mode) -> LeaseResult<Option<(Taken, Store)>> {
    let holds = |store: &Store| -> LeaseResult<bool> {
        match store.current(resource) {
            Some(lease) if lease.held_by(token, clock_now()) => {
                ensure_member(store, resource, lease.owner).map(|()| true)
            }
            _ => Ok(false),
        }
    };
    let store = Store::open();
    let taken = match barrier::try_lock(resource, mode) {
        Some(taken) => taken,
        None => {
            // Another transaction holds a conflicting lock: queue only if this call can succeed.
            if !holds(&store)? {
                return Ok(None);
            }
            barrier::lock(resource, mode)
        }
    };
    if store.transaction_snapshot() {
        if !holds(&store)? {
            drop(store);
            taken.release_if_unused_before();
            return Ok(None);
        }
        store.ensure_snapshot_current(resource);
    }
    Ok(Some((taken, store)))
}

/// Whether `token` holds `resource` for the caller: it holds the lease now and the caller is a
/// member of the lease's owner role. If so, no other holder can be granted the resource until
/// this transaction ends, and the transaction has proved the resource. `Err(NotLeaseOwner)`
/// when the token holds but the caller is not a member; `lease_check` answers false for it.
pub fn check_as_member(resource: &str, token: i64) -> LeaseResult<bool> {
    let taken = barrier::lock(resource, Mode::Fence);
    let now = clock_now();
    let store = Store::open();
    let outcome = match holds(&store, resource, token, now) {
        None => Ok(false),
        Some(lease) => ensure_member(&store, resource, lease.owner).map(|()| true),
    };
    drop(store);
    match outcome {
        Ok(true) => barrier::prove(resource),
        // A failed fence protects nothing: it must not hold up the lease's owner.
        _ => taken.release_if_unused_before(),
    }
    outcome
}

/// `lease_check`: as [`check_as_member`], with false for a caller who is not a member.
pub fn check(resource: &str, token: i64) -> LeaseResult<bool> {
    match check_as_member(resource, token) {
        Err(LeaseError::NotLeaseOwner { .. }) => Ok(false),
        outcome => outcome,
    }
}

/// `lease_assert`: 55000 unless `token` holds `resource`, 42501 if it does but the caller is
/// not a member of the lease's owner role.
pub fn assert_held(resource: &str, token: i64) -> LeaseResult<()> {
    match check_as_member(resource, token)? {
        true => Ok(()),
        false => Err(LeaseError::NotHeld { resource: resource.into(), token }),
    }
}

/// `lease_force_release`: ends the live lease on `resource` whatever its holder, announcing
/// `revoked`; true if there was one.
pub fn force_release(resource: &str) -> bool {
    // A revocation that finds nothing to revoke does not queue for the lock.
    let store = Store::open();
    if store.current(resource).is_none_or(|lease| lease.expires_at <= clock_now()) {
        return false;
    }
    let taken = barrier::lock(resource, Mode::Change);
    let now = clock_now();
    let revoked = store.current(resource).filter(|lease| lease.expires_at > now).and_then(|current| {
        store.ensure_snapshot_current(resource);
        store.delete_grant(resource, current.token)
    });
    drop(store);
    let Some(lease) = revoked else {
        taken.release_if_unused_before();
        return false;
    };
    session::unbind_at_commit(lease.token);
    events::record_change(Kind::Revoked, resource, &lease, None, now);
    true
}

/// The lease `token` holds on `resource` at `now`, if it does: as the store finds it, and not
/// attached to a lifeline whose database session ended (which ends it at once, before the
/// worker or a takeover removes it).
fn holds(store: &Store, resource: &str, token: i64, now: Timestamp) -> Option<Lease> {
    store.holds(resource, token, now).filter(|lease| {
        !lease
            .lifeline
            .is_some_and(|lifeline| lifeline.session_bound && session::lifeline_holder_is_gone(lifeline.id))
    })
}

/// The caller must be a member of the lease's owner role to renew, release or fence it.
/// Raising after a change aborts the transaction, so the change is undone.
fn ensure_member(store: &Store, resource: &str, owner: pg_sys::Oid) -> LeaseResult<()> {
    store
        .ensure_privileges_of(owner)
        .map_err(|owner| LeaseError::NotLeaseOwner { resource: resource.into(), owner })
}
