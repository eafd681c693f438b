//! One attempt at a shared lease or a permit: joining the resource's other holders.
//!
//! A shared lease or a permit is a row of its own (slot 1 and up), under a lock of its own
//! ([`barrier::lock_slot`]). Its grant takes, each only tried:
//! 1. the resource's lock in [`Mode::Join`]: no exclusive lease can be granted, renewed as the
//!    holder's re-acquire, or fenced meanwhile, while other shared grants and permits go on;
//! 2. the resource's kind lock ([`barrier::try_lock_kind`]): shared leases and permits never
//!    hold the resource together; a permit's grant counts alone while the capacity is being
//!    declared, or while permits above a lowered capacity are still live;
//! 3. the lock of the slot it takes, in [`Mode::Change`], under which the slot's row is read
//!    again: a slot whose row ended is taken over only once no fence of it is in progress.
//!
//! A permit takes one of the slots 1 to the capacity, so however many permit grants run at
//! once, no more than the capacity hold; each also counts the live permits, so that permits
//! above a lowered capacity are counted too.
//!
//! Uses the attempt's facts and writes, and barrier, store and waiting.

use pgrx::pg_sys::Oid;

use crate::barrier::{self, Kind, Mode};
use crate::store::{Lease, LeaseMode, Store};
use crate::vocabulary::{clock_now, Timestamp};
use crate::waiting::{self, Place};

use super::attempt::{confirm_lapse, ended, Attempt, BUSY_RETRIES};
use super::write::{extend, grant_at, remove_ended};
use super::Request;

/// One attempt of `request` (a shared lease or a permit); as [`super::attempt::attempt_now`]
/// for an exclusive one: with `patient`, a lock held by another transaction for a moment is
/// tried again, a millisecond apart, before the resource is called busy.
pub(super) fn attempt(store: &Store, request: &Request, ticket: Option<Place>, patient: bool) -> Attempt {
    let resource = request.resource;
    let shared = request.mode == LeaseMode::Shared;
    // While anyone waits, a call that cannot win must not take the locks even for a moment.
    if waiting::anyone_waits() {
        match look(store, request) {
            Err(until) => return Attempt::Refused(until),
            // The holder's re-acquire of its own lease is not a grant: waiters do not stop it.
            Ok(false) if ticket.is_none() && waiting::must_yield(resource, None, shared) => {
                return Attempt::Yielded
            }
            Ok(_) => {}
        }
    }
    let tries = if patient { BUSY_RETRIES } else { 0 };
    let Some(join) = waiting::try_briefly(tries, || barrier::try_lock(resource, Mode::Join)) else {
        // An exclusive lease is being granted, released, renewed or fenced: one that holds
        // refuses at once.
        return look(store, request).map_or_else(Attempt::Refused, |_| Attempt::Busy);
    };
    let outcome = with_kind(store, request, ticket, tries);
    if !matches!(outcome, Attempt::Granted(_)) {
        join.release_if_unused_before();
    }
    outcome
}

/// The rest of [`attempt`], under the resource's lock in join mode: the kind lock, then the
/// decision.
fn with_kind(store: &Store, request: &Request, ticket: Option<Place>, tries: usize) -> Attempt {
    let resource = request.resource;
    let kind = match request.mode {
        LeaseMode::Shared => Kind::Shared,
        // Declaring the capacity (the insert) is done alone.
        _ if store.capacity(resource).is_none() => Kind::PermitAlone,
        _ => Kind::Permit,
    };
    let Some(kind_lock) = waiting::try_briefly(tries, || barrier::try_lock_kind(resource, kind)) else {
        return Attempt::Busy;
    };
    // The capacity: the declared one, or for the first permit the call's, declared (under the
    // kind lock taken alone: nobody declares it meanwhile) only if the permit is granted.
    let (capacity, declare) = match (request.mode, store.capacity(resource)) {
        (LeaseMode::Shared, _) => (None, false),
        (_, Some(capacity)) => (Some(capacity), false),
        (_, None) if kind == Kind::PermitAlone => match request.capacity {
            Some(capacity) => (Some(capacity), true),
            // No capacity to go by (a single acquire was told so before it tried; a claim skips
            // the resource).
            None => {
                kind_lock.release_if_unused_before();
                return Attempt::Refused(clock_now());
            }
        },
        // Declared and removed again meanwhile: look again.
        (_, None) => {
            kind_lock.release_if_unused_before();
            return Attempt::Busy;
        }
    };
    let request = Request { capacity, ..request.clone() };
    let outcome = decide(store, &request, ticket, kind == Kind::PermitAlone);
    // A permit granted or re-acquired with a capacity, where none is declared, declares it
    // (and keeps the kind lock it declared under until the transaction ends).
    let holds = matches!(outcome, Attempt::Granted(_) | Attempt::Extended(_));
    if let (true, true, Some(capacity)) = (holds, declare, capacity) {
        store.declare_capacity(resource, capacity);
    } else if !matches!(outcome, Attempt::Granted(_)) {
        kind_lock.release_if_unused_before();
    }
    outcome
}

/// A hint, read without locks: whether the caller holds a live lease of this mode on the
/// resource already, or the expiry of what keeps `request` out.
fn look(store: &Store, request: &Request) -> Result<bool, Timestamp> {
    let now = clock_now();
    let rows = store.rows(request.resource);
    let capacity = match request.mode {
        LeaseMode::Permit => store.capacity(request.resource).or(request.capacity),
        _ => None,
    };
    keeps_out(&rows, now, request, capacity, store.caller()).map(|mine| mine.is_some())
}

/// Whether `request` may join the holders in `rows` at `now`: Ok with the caller's own live
/// lease of its mode, if it has one; or the expiry of what keeps it out (a live exclusive
/// lease, a live holder of the other kind, a full capacity).
fn keeps_out<'a>(
    rows: &'a [Lease],
    now: Timestamp,
    request: &Request,
    capacity: Option<i32>,
    role: Oid,
) -> Result<Option<&'a Lease>, Timestamp> {
    let live: Vec<&Lease> = rows.iter().filter(|lease| ended(lease, now, request).is_none()).collect();
    if request.only_if_free && !rows.is_empty() {
        return Err(rows.iter().map(|lease| lease.expires_at).min().unwrap_or(now));
    }
    if let Some(other) = live.iter().find(|lease| lease.slot == 0 || lease.mode != request.mode) {
        return Err(other.expires_at);
    }
    let mine = live
        .iter()
        .copied()
        .find(|lease| !lease.released && lease.holder == request.holder && lease.owner == role);
    match capacity {
        Some(capacity) if mine.is_none() && live.len() >= capacity.max(0) as usize => {
            Err(live.iter().map(|lease| lease.expires_at).min().unwrap_or(now))
        }
        _ => Ok(mine),
    }
}

/// Decides under the resource's join and kind locks: refuses, extends the caller's own live
/// lease of this mode, yields to waiters, or grants a slot. `alone`: the kind lock is held
/// exclusively (permits above the capacity may be counted without racing other grants).
fn decide(store: &Store, request: &Request, ticket: Option<Place>, alone: bool) -> Attempt {
    let resource = request.resource;
    let now = clock_now();
    // What the statement read must be current (snapshot_consistent claims).
    if request.only_if_free && store.changed_since_snapshot(resource) {
        return Attempt::Refused(now);
    }
    // A row that looks ended with its lifeline counts as ended only once the lapse is confirmed
    // (a renewal of the lifeline may be committing).
    let mut rows = Vec::new();
    for lease in store.rows(resource) {
        match confirm_lapse(store, request, Some(lease), now) {
            None => return Attempt::Busy,
            Some(lease) => rows.extend(lease),
        }
    }
    let mine = match keeps_out(&rows, now, request, request.capacity, store.caller()) {
        Ok(found) => found,
        Err(until) => return Attempt::Refused(until),
    };
    if let Some(mine) = mine {
        return extend_own(store, request, mine, now);
    }
    let capacity = request.capacity.unwrap_or(i32::MAX);
    // Permits above a lowered capacity still live: counted alone, or not at all.
    let mut counting_alone = None;
    if !alone && rows.iter().any(|lease| lease.slot > capacity && ended(lease, now, request).is_none()) {
        match barrier::try_lock_kind(resource, Kind::PermitAlone) {
            Some(taken) => counting_alone = Some(taken),
            None => return Attempt::Busy,
        }
    }
    let outcome = take_slot(store, request, ticket, &rows, now);
    if let (Some(taken), false) = (counting_alone, matches!(outcome, Attempt::Granted(_))) {
        taken.release_if_unused_before();
    }
    outcome
}

/// The grant itself, once nothing keeps `request` out: yields to waiters, or takes the lowest
/// slot without a live row whose lock is free (a permit's within the capacity).
fn take_slot(
    store: &Store,
    request: &Request,
    ticket: Option<Place>,
    rows: &[Lease],
    now: Timestamp,
) -> Attempt {
    let resource = request.resource;
    let shared = request.mode == LeaseMode::Shared;
    let capacity = request.capacity.unwrap_or(i32::MAX);
    if waiting::must_yield(resource, ticket, shared) {
        return Attempt::Yielded;
    }
    // The grant relies on the ended exclusive lease, and on the ended rows of the other kind or
    // above the capacity, having ended: they are removed first (their tokens must fail from now
    // on, and their end is announced before this grant), or the resource is busy.
    let relied_on = rows.iter().filter(|lease| {
        (lease.slot == 0 || lease.mode != request.mode || lease.slot > capacity)
            && ended(lease, now, request).is_some()
    });
    if !remove_ended(store, request, relied_on.cloned().collect(), now) {
        return Attempt::Busy;
    }
    // A shared lease tries slots until one's lock is free: every slot lock another grant holds
    // is a lock in the lock table, so the search ends.
    let last = if shared { i32::MAX } else { capacity };
    for slot in 1..=last {
        pgrx::pg_sys::check_for_interrupts!();
        if rows.iter().any(|lease| lease.slot == slot && ended(lease, now, request).is_none()) {
            continue;
        }
        let Some(lock) = barrier::try_lock_slot(resource, slot, Mode::Change) else { continue };
        // Under the slot's lock, its row as it is now: it may have been taken meanwhile.
        let row = store.rows(resource).into_iter().find(|lease| lease.slot == slot);
        let Some(row) = confirm_lapse(store, request, row, now) else {
            lock.release_if_unused_before();
            continue;
        };
        let outcome = match &row {
            None => grant_at(store, request, slot, None, now),
            Some(lease) => match ended(lease, now, request) {
                Some(reason) => grant_at(store, request, slot, Some((reason, lease)), now),
                None => Attempt::Busy,
            },
        };
        if let Attempt::Granted(_) = outcome {
            return outcome;
        }
        lock.release_if_unused_before();
    }
    Attempt::Busy
}

/// The caller's re-acquire of its own live shared lease or permit, under its slot's lock in
/// [`Mode::Extend`] (tried).
fn extend_own(store: &Store, request: &Request, mine: &Lease, now: Timestamp) -> Attempt {
    let Some(lock) = barrier::try_lock_slot(request.resource, mine.slot, Mode::Extend) else {
        return Attempt::Busy;
    };
    let current = store.row_of(request.resource, mine.token);
    let extended = current
        .filter(|lease| ended(lease, now, request).is_none())
        .and_then(|lease| extend(store, request, &lease, now));
    extended.unwrap_or_else(|| {
        lock.release_if_unused_before();
        Attempt::Busy
    })
}
