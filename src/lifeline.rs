//! Lifelines: one expiry that many leases share. A holder opens a lifeline with a ttl, attaches
//! leases to it when it acquires them, and keeps all of them alive with one renewal of the
//! lifeline, at the cost of one row whatever the number of leases. When the lifeline lapses
//! (its ttl runs out, or the database session it is bound to ends) every lease attached to it
//! ends together; closing it releases them all. A lifeline is a row of `lease.lifelines`, its
//! id a number of the token sequence (so its session lock never meets a lease's); the model is
//! the etcd lease and the Consul session, not the database session of `session_bound`.
//!
//! Each lifeline has two locks ([`barrier::lock_lifeline`]). Renewals take its renewal lock
//! shared; acting on its lapse (a takeover of one of its leases, the sweep) takes it exclusive,
//! and only tries: so a renewal that found the lifeline live and has not committed yet makes
//! its leases busy instead of lost, and once a lapse is confirmed under that lock it is final
//! (a renewal checks the expiry against the clock, which only moves on). Attaches take its
//! membership lock shared, and only try it (an acquire never waits in the lock manager: while
//! the lifeline is ending its attaches are busy); closing it takes that lock exclusive, so that
//! no lease is attached to a lifeline while it ends, and also the renewal lock, waiting for
//! renewals in progress. The sweep only confirms a lapse under both (tried) and gives them
//! back: a lapse is final, and an attach to a lapsed lifeline fails on its own; it deletes the
//! lifeline's row under the membership lock, tried again and kept. A close then waits for its
//! leases' fences, as a release does: a transaction that fenced one of them and then renews the
//! same lifeline while another closes it deadlocks (40P01), as any two transactions that take
//! two locks in opposite orders do; everything else takes the lifeline's locks first or only
//! tries them.
//!
//! Uses vocabulary, errors, settings, barrier, store, events, session and waiting.

use crate::barrier::{self, LifelineMode, Taken};
use crate::errors::{LeaseError, LeaseResult};
use crate::events::{self, Kind};
use crate::session;
use crate::store::{LeaseMode, Lifeline, Listed, Store};
use crate::vocabulary::{clock_now, Timestamp};
use crate::{settings, waiting};

/// Whether the lifeline `id`, as found, has ended at `now`: its expiry passed, or the database
/// session it is bound to ended (asking takes that session's lock, if free, until the end of
/// the transaction).
pub fn lapsed(id: i64, lifeline: &Lifeline, now: Timestamp) -> bool {
    lifeline.expires_at <= now || (lifeline.session_bound && session::lifeline_holder_is_gone(id))
}

/// The lifeline `id` if it is live at `now` and the caller may use it.
fn live(store: &Store, id: i64, now: Timestamp) -> LeaseResult<Lifeline> {
    let lifeline = store.lifeline(id).filter(|lifeline| !lapsed(id, lifeline, now));
    let lifeline = lifeline.ok_or(LeaseError::LifelineLapsed { id })?;
    store.ensure_privileges_of(lifeline.owner).map_err(|owner| LeaseError::NotLifelineOwner { id, owner })?;
    Ok(lifeline)
}

fn ensure_current_shape(store: &Store) -> LeaseResult<()> {
    match store.shape().has_lifelines() {
        true => Ok(()),
        false => Err(LeaseError::NeedsUpdate("lifelines", "0.5.0")),
    }
}

/// `lease_lifeline_open`: a new lifeline named `name` that lapses `ttl` microseconds from now
/// unless renewed; with `session_bound`, also when this database session ends.
pub fn open(name: &str, ttl: i64, session_bound: bool) -> LeaseResult<i64> {
    let store = Store::open();
    ensure_current_shape(&store)?;
    let id = store.next_token();
    let now = clock_now();
    let expires_at = now + ttl;
    let application_name = if session_bound { session::application_name() } else { String::new() };
    if session_bound && !session::bind(&store, id) {
        pgrx::error!("lease: could not take the session lock of a new lifeline");
    }
    let binding = session_bound.then(|| session::this_session(&application_name));
    store.open_lifeline(id, name, ttl, now, expires_at, binding);
    events::expiry_at_commit(expires_at);
    Ok(id)
}

/// `lease_lifeline_renew`: moves the lifeline's expiry to now + `ttl` (its own ttl if None,
/// within today's `lease.max_ttl`), and with it the end of every lease attached to it; returns
/// the new expiry. 55000 if it lapsed.
pub fn renew(id: i64, ttl: Option<i64>) -> LeaseResult<Timestamp> {
    let store = Store::open();
    ensure_current_shape(&store)?;
    let taken = barrier::lock_lifeline(id, LifelineMode::Renew, false).expect("a waiting lock is granted");
    let now = clock_now();
    let renewed = live(&store, id, now).and_then(|lifeline| {
        let ttl = ttl.unwrap_or(lifeline.ttl.min(settings::max_ttl_usecs()));
        let expires_at = now.saturating_add(ttl);
        match store.renew_lifeline(id, now, expires_at) {
            true => Ok(expires_at),
            // Live as last committed, but not to this transaction's older snapshot.
            false if store.transaction_snapshot() => Err(serialization_failure(id)),
            false => Err(LeaseError::LifelineLapsed { id }),
        }
    });
    match renewed {
        // A shorter ttl than before: the worker must wake earlier.
        Ok(expires_at) => events::expiry_at_commit(expires_at),
        Err(_) => {
            drop(store);
            taken.release_if_unused_before();
        }
    }
    renewed
}

/// `lease_lifeline_close`: releases every lease attached to the lifeline (announcing each as
/// `released`) and ends the lifeline; returns how many leases it released. Waits for attaches
/// and renewals in progress, then for the fences of its leases, as a release does. 55000 if
/// the lifeline lapsed.
pub fn close(id: i64) -> LeaseResult<i64> {
    let store = Store::open();
    ensure_current_shape(&store)?;
    barrier::lock_lifeline(id, LifelineMode::End, false);
    barrier::lock_lifeline(id, LifelineMode::Lapse, false);
    live(&store, id, clock_now())?;
    let mut released = 0;
    for Listed { resource, token, slot, mode } in store.attached(id, i64::MAX) {
        // Queued for only while the lease is still this lifeline's (as a release queues only
        // when it can succeed): it may have been re-acquired, kept or taken since it was listed.
        let attached = |store: &Store| {
            store.row_of(&resource, token).is_some_and(|lease| {
                !lease.released && lease.lifeline.is_some_and(|lifeline| lifeline.id == id)
            })
        };
        let taken = match barrier::lock_row_change(&resource, slot, mode.kind(), true) {
            Some(taken) => taken,
            None if attached(&store) => barrier::lock_row_change(&resource, slot, mode.kind(), false)
                .expect("a waiting lock is granted"),
            None => continue,
        };
        store.ensure_snapshot_current(&resource);
        let Some(lease) = store.delete_attached(&resource, token, id) else {
            taken.release_if_unused_before();
            continue;
        };
        if lease.mode == LeaseMode::Exclusive {
            barrier::prove(&resource);
        }
        events::record_change(Kind::Released, &resource, &lease, None, clock_now());
        released += 1;
    }
    if !store.delete_lifeline(id) {
        // Live as last committed, but not to this transaction's older snapshot (or removed by
        // hand meanwhile).
        return Err(match store.transaction_snapshot() {
            true => serialization_failure(id),
            false => LeaseError::LifelineLapsed { id },
        });
    }
    session::unbind_at_commit(id);
    Ok(released)
}

fn serialization_failure(id: i64) -> LeaseError {
    LeaseError::SerializationFailure { resource: format!("lifeline {id}") }
}

/// For an acquire that attaches its lease to the lifeline `id`: tries the lifeline's
/// membership lock (with `patient`, again a millisecond apart for up to 10 ms: an end in
/// progress is busy, and an acquire never waits in the lock manager) and returns it with the
/// lifeline, live and usable by the caller; None while busy; 55000 or 42501.
pub fn use_for_attach(store: &Store, id: i64, patient: bool) -> LeaseResult<Option<(Taken, Lifeline)>> {
    ensure_current_shape(store)?;
    let tries = if patient { 10 } else { 0 };
    let attach = || barrier::lock_lifeline(id, LifelineMode::Attach, true);
    let Some(taken) = waiting::try_briefly(tries, attach) else { return Ok(None) };
    match live(store, id, clock_now()) {
        Ok(lifeline) => Ok(Some((taken, lifeline))),
        Err(error) => {
            taken.release_if_unused_before();
            Err(error)
        }
    }
}
