//! The calls a holder makes with its token: renew, release, and the fence (`lease_check`,
//! `lease_assert`, and the `lease_fence` trigger through them); and the administrator's
//! revocation. Each takes the resource's barrier lock in the mode of what it will do
//! ([`crate::barrier`]), reads the clock after the lock, and decides on the row as it is
//! once locked.
//!
//! Uses vocabulary, errors, barrier, store, events and session.

use pgrx::pg_sys;

use crate::barrier::{self, Mode, RowLocks, Taken};
use crate::errors::{LeaseError, LeaseResult};
use crate::events::{self, Event, Kind, Reason};
use crate::session;
use crate::store::{Lease, LeaseMode, Located, Store};
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
            prove(resource, &lease);
            return Ok(true);
        }
        drop(store);
        taken.release_if_unused_before();
        return Ok(false);
    };
    ensure_member(&store, resource, lease.owner)?;
    prove(resource, &lease);
    events::record_change(Kind::Renewed, resource, &lease, Some(expires_at), now);
    Ok(true)
}

/// `lease_release`: ends a held lease; true once, false if `token` no longer holds `resource`.
/// With `keep_for` (microseconds), nobody (the holder included) may have the resource before
/// `acquired_at + keep_for`: the lease is kept, released, until then.
pub fn release(resource: &str, token: i64, keep_for: Option<i64>) -> LeaseResult<bool> {
    release_in(&Store::open(), resource, token, keep_for)
}

/// `lease_release_each`: each `(resource, token)` released as [`release`] does it, in order,
/// through one store (the table and its lookup opened once for the batch); the resources
/// released.
pub fn release_each(pairs: &[(&str, i64)]) -> LeaseResult<Vec<String>> {
    let store = Store::open();
    let mut released = Vec::new();
    for &(resource, token) in pairs {
        if release_in(&store, resource, token, None)? {
            released.push(resource.to_owned());
        }
    }
    Ok(released)
}

fn release_in(store: &Store, resource: &str, token: i64, keep_for: Option<i64>) -> LeaseResult<bool> {
    let Some((taken, located)) = lock_if_held_in(store, resource, token, Mode::Change)? else {
        return Ok(false);
    };
    let now = clock_now();
    // A release that keeps the resource reads the row again before it deletes it.
    let located = located.filter(|_| keep_for.is_none());
    let kept = keep_for.and_then(|keep_for| {
        let held = holds(store, resource, token, now)?;
        let until = held.acquired_at.saturating_add(keep_for);
        let kept = (until > now).then(|| store.keep(resource, token, until, now)).flatten()?;
        // Its release is announced as the lease it was: attached to its lifeline, if it was.
        Some((Lease { lifeline: held.lifeline, ..kept }, until))
    });
    let (lease, kept_until) = match kept {
        Some((lease, until)) => (lease, Some(until)),
        None => match store.delete(resource, token, now, located) {
            Some(lease) => (lease, None),
            None => {
                // Held as last committed, but not to this transaction's older snapshot (the SQL
                // statement reads a lifeline's expiry through it).
                if store.transaction_snapshot() && store.holds(resource, token, now).is_some() {
                    return Err(LeaseError::SerializationFailure { resource: resource.into() });
                }
                taken.release_if_unused_before();
                return Ok(false);
            }
        },
    };
    ensure_member(store, resource, lease.owner)?;
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
    prove(resource, &lease);
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
    prove(resource, &lease);
    Ok(true)
}

/// For a renewal or a release: takes the lock of the row `token` holds (the resource's lock
/// for its exclusive lease, a slot lock for a shared lease or a permit) in `mode`, but queues
/// for it only if `token` holds the lease as last committed and the caller is a member of its
/// owner role, so that a call that cannot succeed never queues in the lock manager (where it
/// would hold up the requests behind it, the holder's own renewals among them); returns the
/// lock and the store, or None (the answer is false), or 42501. Under the lock the statement
/// decides again. Under a transaction-wide snapshot, a lease that changed since the snapshot is
/// 40001: the statement that would write it cannot see it.
fn lock_if_held(resource: &str, token: i64, mode: Mode) -> LeaseResult<Option<(RowLocks, Store)>> {
    let store = Store::open();
    Ok(lock_if_held_in(&store, resource, token, mode)?.map(|(taken, _)| (taken, store)))
}

/// [`lock_if_held`] through a store the caller keeps; with the lock, the row as read under it
/// when it was (see [`lock_row`]).
fn lock_if_held_in(
    store: &Store,
    resource: &str,
    token: i64,
    mode: Mode,
) -> LeaseResult<Option<(RowLocks, Option<Located>)>> {
    let Some((taken, slot, located)) = lock_row(store, resource, token, mode)? else { return Ok(None) };
    if store.transaction_snapshot() {
        if held_as_member(store, resource, token)?.is_none() {
            taken.release_if_unused_before();
            return Ok(None);
        }
        store.ensure_row_current(resource, slot);
    }
    Ok(Some((taken, located)))
}

/// The lease `token` holds on `resource` as last committed, if it holds and the caller is a
/// member of its owner role (42501 if not a member).
fn held_as_member(store: &Store, resource: &str, token: i64) -> LeaseResult<Option<Lease>> {
    match store.row_of(resource, token) {
        Some(lease) if lease.held_by(token, clock_now()) => {
            ensure_member(store, resource, lease.owner).map(|()| Some(lease))
        }
        _ => Ok(None),
    }
}

/// The locks [`lock_row`] took, the row's slot, and the row as read under them.
type Locked = (RowLocks, i32, Option<Located>);

/// Takes the lock of the row of `token` on `resource` in `mode` (for a change of a shared
/// lease's or a permit's row, with the locks of its membership first: see
/// [`barrier::RowLocks`]) and returns them with the row's slot. The resource's lock is tried
/// first (most leases are exclusive, and then the row is read once, under it); for a shared
/// lease or a permit, or while the resource's lock is busy, the row is read first to find its
/// slot, and its locks are queued for only if the call can succeed (see [`lock_if_held`]).
/// None when it cannot. The row of an exclusive lease read under the resource's lock, taken at
/// once, comes with the locks: no other writer of the lease changes it while they are held.
fn lock_row(store: &Store, resource: &str, token: i64, mode: Mode) -> LeaseResult<Option<Locked>> {
    let lease = match barrier::try_lock(resource, mode) {
        Some(taken) => match store.row_located(resource, token) {
            Some(located) if located.lease.slot != 0 => {
                taken.release_if_unused_before();
                located.lease
            }
            // The exclusive lease's row, or none: decided under this lock.
            located => return Ok(Some((taken.into(), 0, located))),
        },
        // Another transaction holds a conflicting lock: queue only if this call can succeed.
        None => match held_as_member(store, resource, token)? {
            Some(lease) => lease,
            None => return Ok(None),
        },
    };
    let slot = lease.slot;
    let take = |dont_wait: bool| match mode {
        Mode::Change => barrier::lock_row_change(resource, slot, lease.mode.kind(), dont_wait),
        mode if dont_wait => barrier::try_lock_slot(resource, slot, mode).map(RowLocks::from),
        mode => Some(barrier::lock_slot(resource, slot, mode).into()),
    };
    match take(true) {
        Some(locks) => Ok(Some((locks, slot, None))),
        None if held_as_member(store, resource, token)?.is_some() => {
            Ok(Some((take(false).expect("a waiting lock is granted"), slot, None)))
        }
        None => Ok(None),
    }
}

/// Whether `token` holds `resource` for the caller: it holds the lease now and the caller is a
/// member of the lease's owner role. If so, the lease cannot be taken over until this
/// transaction ends (for an exclusive lease, no other holder can be granted the resource; for
/// a shared lease, no exclusive one; for a permit, its slot), and for an exclusive lease the
/// transaction has proved the resource. `Err(NotLeaseOwner)` when the token holds but the
/// caller is not a member; `lease_check` answers false for it.
pub fn check_as_member(resource: &str, token: i64) -> LeaseResult<bool> {
    Ok(fence_as_member(resource, token)?.is_some())
}

/// As [`check_as_member`], telling how the lease that holds is held (None: it does not hold).
fn fence_as_member(resource: &str, token: i64) -> LeaseResult<Option<LeaseMode>> {
    let store = Store::open();
    // A caller that is not a member learns it without a lock: it protects nothing.
    let Some((taken, _, _)) = lock_row(&store, resource, token, Mode::Fence)? else {
        return Ok(None);
    };
    let now = clock_now();
    let outcome = match holds(&store, resource, token, now) {
        None => Ok(None),
        Some(lease) => ensure_member(&store, resource, lease.owner).map(|()| Some(lease)),
    };
    drop(store);
    match outcome {
        Ok(Some(lease)) => {
            prove(resource, &lease);
            Ok(Some(lease.mode))
        }
        // A failed fence protects nothing: it must not hold up the lease's owner.
        Ok(None) => {
            taken.release_if_unused_before();
            Ok(None)
        }
        Err(error) => {
            taken.release_if_unused_before();
            Err(error)
        }
    }
}

/// What the `lease_fence` trigger asks of a row's token: as [`check`], true only for an
/// exclusive lease (a shared lease's or a permit's token never passes, whatever the
/// transaction proved before).
pub fn check_exclusive(resource: &str, token: i64) -> LeaseResult<bool> {
    match fence_as_member(resource, token) {
        Err(LeaseError::NotLeaseOwner { .. }) => Ok(false),
        outcome => outcome.map(|mode| mode == Some(LeaseMode::Exclusive)),
    }
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

/// `lease_force_release`: ends the live leases on `resource` whatever their holders (its
/// exclusive lease, or all its shared leases or permits), announcing each as `revoked`; true if
/// there was one. The resource's lock, taken in change mode, keeps new grants of any mode out
/// until the transaction ends.
pub fn force_release(resource: &str) -> bool {
    // A revocation that finds nothing to revoke does not queue for the lock.
    let store = Store::open();
    let live = |store: &Store| {
        let now = clock_now();
        store.rows(resource).into_iter().filter(move |lease| lease.expires_at > now)
    };
    if live(&store).next().is_none() {
        return false;
    }
    let taken = barrier::lock(resource, Mode::Change);
    let mut revoked_any = false;
    for lease in live(&store).collect::<Vec<_>>() {
        let row = (lease.slot != 0).then(|| barrier::lock_slot(resource, lease.slot, Mode::Change));
        let now = clock_now();
        let revoked =
            store.row_of(resource, lease.token).filter(|lease| lease.expires_at > now).and_then(|current| {
                store.ensure_snapshot_current(resource);
                store.delete_grant(resource, current.token)
            });
        let Some(revoked) = revoked else {
            row.into_iter().for_each(Taken::release_if_unused_before);
            continue;
        };
        session::unbind_at_commit(revoked.token);
        let revoked = Lease { capacity: lease.capacity, ..revoked };
        events::record_change(Kind::Revoked, resource, &revoked, None, now);
        revoked_any = true;
    }
    drop(store);
    if !revoked_any {
        taken.release_if_unused_before();
    }
    revoked_any
}

/// An exclusive lease's call with its token proves the resource for `lease_fence`; a shared
/// lease's or a permit's does not (writes under `lease_fence` need the exclusive lease).
fn prove(resource: &str, lease: &Lease) {
    if lease.mode == LeaseMode::Exclusive {
        barrier::prove(resource);
    }
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
