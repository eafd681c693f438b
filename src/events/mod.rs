//! Lease events: what changed, announced with NOTIFY once the change has committed.
//!
//! A call that changes a lease records an [`Event`] in this backend's list for the current
//! (sub)transaction. A subtransaction that aborts takes its events with it; a transaction that
//! aborts announces nothing (`transaction` calls the hooks below). At commit the waiters of
//! every freed resource are woken, and the events go:
//! - into this database's event ring ([`ring`], in its [`database`] slot) when the library is
//!   preloaded and an expiry worker serves this database: the worker publishes them in
//!   batches, so callers' commits never queue behind NOTIFY's database-wide commit lock. While
//!   no backend of the database listens on the channel ([`listeners`]), they go nowhere:
//!   nobody could receive them;
//! - otherwise straight to NOTIFY in the committing transaction (ordered by PostgreSQL itself),
//!   and the launcher is asked to start a worker for this database.
//!
//! Events of one resource are appended while the resource's barrier lock is still held (it is
//! released after the commit callbacks run), so they are in commit order. Delivery is at most
//! once, like NOTIFY itself: a listener that is not connected misses events, and a full ring
//! drops events, which shows as a gap in `seq`. The payload is JSON ([`payload`]).
//!
//! Uses vocabulary, settings, shmem, stats, barrier and the store's lease row.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde::Serialize;

use crate::barrier::resource_key;
use crate::settings;
use crate::stats::{self, Counter};
use crate::store::{Lease, LeaseMode};
use crate::vocabulary::{nesting_level, Timestamp, MAX_DATA_BYTES};

pub mod database;
pub mod listeners;
mod payload;
pub mod ring;

pub use payload::payload;

/// What happened to a lease; its name in the payload is the variant's, in snake case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Kind {
    Acquired = 1,
    Renewed = 2,
    Released = 3,
    Expired = 4,
    Revoked = 5,
}

/// Why a lease expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Reason {
    Ttl = 1,
    SessionEnded = 2,
    /// The lifeline the lease was attached to lapsed (or its database session ended).
    LifelineExpired = 3,
}

impl Kind {
    fn from_repr(value: u8) -> Option<Kind> {
        [Kind::Acquired, Kind::Renewed, Kind::Released, Kind::Expired, Kind::Revoked]
            .into_iter()
            .find(|kind| *kind as u8 == value)
    }

    /// Whether a waiter for the resource must look again: it was freed, or its expiry (which
    /// the head of the queue sleeps until) moved.
    fn wakes_waiters(self) -> bool {
        matches!(self, Kind::Released | Kind::Expired | Kind::Revoked | Kind::Renewed)
    }
}

impl Reason {
    fn from_repr(value: u8) -> Option<Reason> {
        [Reason::Ttl, Reason::SessionEnded, Reason::LifelineExpired]
            .into_iter()
            .find(|reason| *reason as u8 == value)
    }
}

/// One committed (or about to be committed) change of a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// On `expired` only.
    pub reason: Option<Reason>,
    pub resource: String,
    pub holder: String,
    pub token: i64,
    /// The lease's expiry after the change (acquired, renewed) or when it ended (expired).
    pub expires_at: Option<Timestamp>,
    /// Server time of the change.
    pub at: Timestamp,
    /// The lifeline the lease is (or was) attached to.
    pub lifeline: Option<i64>,
    /// The lease's data as compact JSON, when `lease.notify_data` is on.
    pub data: Option<String>,
    /// How the lease holds its resource.
    pub mode: LeaseMode,
    /// A permit's resource's capacity, when known.
    pub capacity: Option<i32>,
}

impl Event {
    /// The event of a change of `lease` (its holder, token, lifeline and data) on `resource`.
    pub fn of(
        kind: Kind,
        resource: &str,
        lease: &Lease,
        expires_at: Option<Timestamp>,
        at: Timestamp,
    ) -> Event {
        Event {
            kind,
            reason: None,
            resource: resource.to_owned(),
            holder: lease.holder.clone(),
            token: lease.token,
            expires_at,
            at,
            lifeline: lease.lifeline.map(|lifeline| lifeline.id),
            // Data the functions accept always fits; data written into the table by hand that
            // does not is left out, so that a payload always fits NOTIFY's limit.
            data: lease
                .data
                .as_ref()
                .filter(|_| settings::notify_data())
                .map(|data| data.to_string())
                .filter(|data| data.len() <= MAX_DATA_BYTES),
            mode: lease.mode,
            capacity: lease.capacity,
        }
    }

    /// With the reason an `expired` event gives.
    pub fn because(self, reason: Reason) -> Event {
        Event { reason: Some(reason), ..self }
    }
}

/// An event of the current transaction: the level of the subtransaction that made it, and
/// whether it is to be announced. Every event is kept, announced or not: at commit the ones
/// that free a resource wake its waiters, and new expiries may wake the expiry worker.
struct Pending {
    level: i32,
    announce: bool,
    event: Event,
}

thread_local! {
    /// This transaction's events.
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// Expiries of this transaction that no event carries (lifelines opened or renewed), with
    /// the subtransaction level that made them: the worker must wake for them.
    static EXPIRIES: RefCell<Vec<(i32, Timestamp)>> = const { RefCell::new(Vec::new()) };
}

/// Tells the expiry worker, once this transaction commits, that something expires at `at`.
pub fn expiry_at_commit(at: Timestamp) {
    let level = nesting_level();
    EXPIRIES.with(|expiries| expiries.borrow_mut().push((level, at)));
}

/// Records an event of the current transaction. A permit's event names its resource's capacity,
/// read here if the call that made it did not know it.
pub fn record(mut event: Event) {
    if event.mode == LeaseMode::Permit && event.capacity.is_none() {
        event.capacity = crate::store::Store::open().capacity(&event.resource);
    }
    let announce = settings::notify_enabled() && (event.kind != Kind::Renewed || settings::notify_renewals());
    let level = nesting_level();
    PENDING.with(|pending| pending.borrow_mut().push(Pending { level, announce, event }));
}

/// Records the event of a change of `lease` on `resource` (see [`Event::of`]).
pub fn record_change(
    kind: Kind,
    resource: &str,
    lease: &Lease,
    expires_at: Option<Timestamp>,
    at: Timestamp,
) {
    record(Event::of(kind, resource, lease, expires_at, at));
}

/// Whether this transaction has recorded events (or expiries for the worker).
pub fn any_pending() -> bool {
    PENDING.with(|pending| !pending.borrow().is_empty())
        || EXPIRIES.with(|expiries| !expiries.borrow().is_empty())
}

/// Before commit: where the ring does not serve this database, announce with NOTIFY now (in
/// the committing transaction), and mark those events as announced.
pub fn before_commit() {
    if !any_pending() || database::databases().and_then(database::Databases::serving_my_database).is_some() {
        return;
    }
    let to_send: Vec<Event> = PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        pending
            .iter_mut()
            .filter(|p| p.announce)
            .map(|p| {
                p.announce = false;
                p.event.clone()
            })
            .collect()
    });
    if to_send.is_empty() || !notify_channel_is_valid() {
        return;
    }
    if settings::notify_queue_too_full() {
        // A failed commit would be worse than a lost event: drop them, and count them.
        stats::add(Counter::EventsDropped, to_send.len() as u64);
        return;
    }
    for event in &to_send {
        notify_now(&payload(event, None));
    }
}

/// At commit: count the changes, wake the worker for an earlier expiry, and hand the events to
/// announce to the ring. Returns the lock keys of the freed (or renewed) resources, whose
/// waiters are woken once this transaction's locks are released.
pub fn at_commit(anyone_waits: bool) -> Vec<u64> {
    let pending = take_pending();
    let expiries = EXPIRIES.with(|expiries| std::mem::take(&mut *expiries.borrow_mut()));
    let Some(databases) = database::databases().filter(|_| !pending.is_empty() || !expiries.is_empty())
    else {
        return Vec::new();
    };
    for p in &pending {
        let counter = match (p.event.kind, p.event.reason) {
            (Kind::Acquired, _) => Counter::Acquired,
            (Kind::Renewed, _) => Counter::Renewed,
            (Kind::Released, _) => Counter::Released,
            (Kind::Expired, Some(Reason::SessionEnded)) => Counter::ExpiredSessionEnd,
            (Kind::Expired, _) => Counter::ExpiredTtl,
            (Kind::Revoked, _) => Counter::Revoked,
        };
        stats::add(counter, 1);
    }
    let freed: Vec<u64> = match anyone_waits {
        false => Vec::new(),
        true => pending
            .iter()
            .filter(|p| p.event.kind.wakes_waiters())
            .map(|p| resource_key(&p.event.resource))
            .collect(),
    };
    // The slot chosen before commit (events not sent then are for its ring), even if its worker
    // stopped since: it publishes them when it is back.
    let Some(slot) = databases.assigned_to_my_database() else {
        // Announced before commit already, unless the slot was freed since then (its worker
        // could not be started): those are lost, and counted. A worker must still expire
        // these leases on time.
        let lost = pending.iter().filter(|p| p.announce).count();
        stats::add(Counter::EventsDropped, lost as u64);
        databases.request_worker();
        return freed;
    };
    let earliest_expiry = pending
        .iter()
        .filter(|p| matches!(p.event.kind, Kind::Acquired | Kind::Renewed | Kind::Released))
        .filter_map(|p| p.event.expires_at)
        .chain(expiries.iter().map(|(_, at)| *at))
        .min();
    if let Some(at) = earliest_expiry {
        slot.earliest_expiry.fetch_min(at, Ordering::AcqRel);
    }
    let sweep_earlier = earliest_expiry.is_some_and(|at| at < slot.next_wakeup.load(Ordering::Acquire));
    // Into the ring only if some backend may listen: otherwise they would be published to nobody.
    let heard = pending.iter().any(|p| p.announce) && listeners::anyone_listens_here();
    let mut announced = pending.iter().filter(|p| p.announce && heard).peekable();
    let first_request = announced.peek().is_some() && {
        for p in announced {
            slot.ring.push(&p.event);
        }
        // Pairs with the worker's fence between clearing the flag and reading the ring: either
        // it sees these events or we see the flag cleared and wake it.
        std::sync::atomic::fence(Ordering::SeqCst);
        !slot.publish_requested.load(Ordering::Acquire)
            && !slot.publish_requested.swap(true, Ordering::AcqRel)
    };
    if first_request || sweep_earlier {
        slot.wake_worker();
    }
    freed
}

/// At abort: nothing happened.
pub fn at_abort() {
    drop(take_pending());
    EXPIRIES.with(|expiries| expiries.borrow_mut().clear());
}

/// At subtransaction abort: its events never happened.
pub fn at_subtransaction_abort(level: i32) {
    PENDING.with(|pending| pending.borrow_mut().retain(|p| p.level < level));
    EXPIRIES.with(|expiries| expiries.borrow_mut().retain(|(at, _)| *at < level));
}

/// At subtransaction commit: its events belong to the parent now.
pub fn at_subtransaction_commit(level: i32) {
    PENDING.with(|pending| {
        for p in pending.borrow_mut().iter_mut().filter(|p| p.level >= level) {
            p.level = level - 1;
        }
    });
    EXPIRIES.with(|expiries| {
        for (at, _) in expiries.borrow_mut().iter_mut().filter(|(at, _)| *at >= level) {
            *at = level - 1;
        }
    });
}

fn take_pending() -> Vec<Pending> {
    PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()))
}

/// Whether `lease.notify_channel` is a name NOTIFY accepts (1 to 63 bytes); warns if not, so
/// that a bad setting loses events instead of failing every lease transaction.
pub fn notify_channel_is_valid() -> bool {
    let channel = settings::notify_channel();
    let valid = !channel.is_empty() && channel.len() < pg_sys::NAMEDATALEN as usize;
    if !valid {
        warning!("lease.notify_channel \"{channel}\" is not a valid channel name; lease events are not sent");
    }
    valid
}

/// Sends one notification on `lease.notify_channel` in the current transaction.
pub fn notify_now(payload: &str) {
    let channel = settings::notify_channel();
    // SAFETY: pg_notify is called through the guarded fmgr path with two text arguments.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.as_str().into_datum(), payload.into_datum()],
        );
    }
}
