//! The SQL API: `lease_acquire` (with waiting and session binding), `lease_renew`,
//! `lease_release`, `lease_check`, `lease_assert`, `lease_force_release`, `lease_sweep`,
//! `lease_event_stats`, and the internal helpers behind `lease_info` and `lease.active`.
//!
//! The public signatures (argument names, defaults, comments, grants) live in the SQL scripts
//! (`sql/lease--0.1.0.sql` and the version steps after it);
//! the functions here are their C entry points. Each one validates every argument before it
//! touches anything, then takes the resource's barrier lock ([`crate::barrier`]), then reads
//! the server clock, then reads and writes the lease through [`crate::store`]: expiry is
//! always decided on the row as it is once locked, by a clock read after the lock.

use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::barrier::{self, Mode};
use crate::errors::{LeaseError, LeaseResult, OrRaise};
use crate::events::{self, Event, Kind, Reason};
use crate::expiry;
use crate::settings;
use crate::stats::{self, Counter};
use crate::store::{self, clock_now, Binding, Store, Timestamp};
use crate::transaction;
use crate::{session, waiting};

/// Longest resource name, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 512;
/// Longest holder name, in bytes.
pub const MAX_HOLDER_BYTES: usize = 256;

const USECS_PER_DAY: i128 = 86_400_000_000;
/// How soon a waiter looks again at a resource whose lock another transaction holds, if no
/// commit or abort wakes it first.
const BUSY_RETRY_MS: i64 = 5;
/// How many times (a millisecond apart) an acquire tries again for a lock that another
/// transaction holds, unless the lease is another holder's: long enough for a sweep's removal or
/// another acquirer's refused attempt, short enough to answer at once for a long fence.
const BUSY_RETRIES: usize = 10;
/// How `extract(epoch from interval)` counts a month.
const DAYS_PER_MONTH: i128 = 30;

/// Grants `resource` to `holder` for `ttl` and returns a fencing token, or NULL when another
/// holder has it. Re-acquiring a lease one already holds (same holder name, same role) returns
/// the same token and moves the expiry to now + ttl. With `wait` > 0 it queues (first come,
/// first served) until granted or the wait runs out; with `session_bound` the lease also ends
/// when the calling session ends.
#[pg_extern(sql = false)]
fn lease_acquire(
    resource: Option<&str>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    wait: Option<Interval>,
    session_bound: Option<bool>,
) -> Option<i64> {
    acquire(resource, holder, ttl, wait, session_bound).or_raise()
}

/// Takes up to `max_count` of `resources` that are free (or expired), in the order given, and
/// returns each with its token. Never waits: resources that another transaction is changing at
/// this moment, or that are held, or that queued waiters are owed, are skipped. A resource the
/// caller already holds (same holder, same role) is returned again with its expiry extended.
/// With `snapshot_consistent`, only resources without a lease row whose lease has not changed
/// since the calling statement's snapshot are taken, so what that statement read is current.
#[pg_extern(sql = false)]
fn lease_acquire_any(
    resources: Option<Array<&str>>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    max_count: Option<i32>,
    session_bound: Option<bool>,
    snapshot_consistent: Option<bool>,
) -> TableIterator<'static, (name!(resource, String), name!(token, i64))> {
    let claim = Claim { max_count, session_bound, snapshot_consistent };
    TableIterator::new(acquire_any(resources, holder, ttl, claim).or_raise())
}

/// Moves the expiry of a held lease to now + ttl; false if `token` no longer holds `resource`.
#[pg_extern(sql = false)]
fn lease_renew(resource: Option<&str>, token: Option<i64>, ttl: Option<Interval>) -> bool {
    renew(resource, token, ttl).or_raise()
}

/// Ends a held lease; true once, false if `token` no longer holds `resource`.
#[pg_extern(sql = false)]
fn lease_release(resource: Option<&str>, token: Option<i64>) -> bool {
    release(resource, token).or_raise()
}

/// The fence: true if `token` holds `resource` now, and then no other holder can be granted
/// the resource until the calling transaction ends.
#[pg_extern(sql = false)]
fn lease_check(resource: Option<&str>, token: Option<i64>) -> bool {
    check(resource, token).or_raise()
}

/// The fence as a statement: raises 55000 unless `token` holds `resource`.
#[pg_extern(sql = false)]
fn lease_assert(resource: Option<&str>, token: Option<i64>) {
    assert_held(resource, token).or_raise()
}

/// `lease_assert`: 55000 unless `token` holds `resource`, 42501 if it does but the caller is
/// not a member of the lease's owner role.
pub fn assert_held(resource: Option<&str>, token: Option<i64>) -> LeaseResult<()> {
    let resource = name_argument(resource, "resource", MAX_RESOURCE_BYTES)?;
    let token = token_argument(token)?;
    ensure_primary()?;
    match check_as_member(resource, token)? {
        true => Ok(()),
        false => Err(LeaseError::NotHeld { resource: resource.into(), token }),
    }
}

/// Administrator's release: ends the live lease on `resource` whatever its holder, announcing
/// `revoked`; true if there was one. Not executable by PUBLIC.
#[pg_extern(sql = false)]
fn lease_force_release(resource: Option<&str>) -> bool {
    force_release(resource).or_raise()
}

pub fn force_release(resource: Option<&str>) -> LeaseResult<bool> {
    let resource = name_argument(resource, "resource", MAX_RESOURCE_BYTES)?;
    ensure_primary()?;
    // A revocation that finds nothing to revoke does not queue for the lock.
    let store = Store::open();
    if store.current(resource).is_none_or(|lease| lease.expires_at <= clock_now()) {
        return Ok(false);
    }
    let held = barrier::lock(resource, Mode::Change);
    let now = clock_now();
    let revoked = store.current(resource).filter(|lease| lease.expires_at > now).and_then(|current| {
        ensure_snapshot_current(&store, resource);
        let (holder, _) = store.delete_grant(resource, current.token)?;
        Some((current, holder))
    });
    drop(store);
    let Some((current, holder)) = revoked else {
        held.release_if_unused_before();
        return Ok(false);
    };
    session::unbind_at_commit(current.token);
    record(Kind::Revoked, resource, &holder, current.token, None, now);
    Ok(true)
}

/// Removes up to `max_count` expired leases (NULL: `lease.expire_batch`), announcing each as
/// `expired`; returns how many it removed. The expiry worker runs the same sweep.
#[pg_extern(sql = false)]
fn lease_sweep(max_count: Option<i32>) -> i32 {
    let limit = match max_count {
        None => settings::expire_batch(),
        Some(count) if count < 1 => LeaseError::invalid("max_count", "must be at least 1").raise(),
        Some(count) => i64::from(count),
    };
    ensure_primary().or_raise();
    expiry::sweep(limit).removed as i32
}

/// Counters of this database's event stream since its expiry worker was assigned: the last
/// sequence number, events waiting to be published, events published, and events dropped
/// because the ring was full. All zero while no worker serves this database (events then go
/// straight to NOTIFY).
#[pg_extern(sql = false)]
fn lease_event_stats() -> TableIterator<
    'static,
    (name!(last_seq, i64), name!(pending, i64), name!(published, i64), name!(dropped, i64)),
> {
    let serving = crate::shared::get().and_then(crate::shared::Shared::assigned_to_my_database);
    let (last_seq, pending, published, dropped) = serving.map_or((0, 0, 0, 0), |state| {
        let (last_seq, pending, dropped) = state.ring_counters();
        let published = state.published.load(std::sync::atomic::Ordering::Relaxed);
        (last_seq, pending, published, dropped)
    });
    TableIterator::once((last_seq as i64, pending as i64, published as i64, dropped as i64))
}

/// `lease._waiter_counts()`: how many calls wait for each resource, by lock key; `lease.active`
/// joins it on `lease._resource_key(resource)`.
#[pg_extern(sql = false)]
fn waiter_counts() -> TableIterator<'static, (name!(resource_key, i64), name!(waiters, i32))> {
    TableIterator::new(waiting::counts().into_iter().map(|(key, count)| (key as i64, count)))
}

/// `lease._resource_key(resource)`: the 64-bit lock key of a resource name.
#[pg_extern(sql = false)]
fn resource_key(resource: &str) -> i64 {
    barrier::resource_key(resource) as i64
}

/// `lease._token_visible(owner)`: whether the current role has the privileges of `owner`, or
/// may read `lease.leases`: who sees a lease's row in `lease.active`.
#[pg_extern(sql = false)]
fn token_visible(owner: pg_sys::Oid) -> bool {
    // SAFETY: reads the current user id.
    may_see_tokens(unsafe { pg_sys::GetUserId() }, owner)
}

/// Whether `role` may see the tokens of leases owned by `owner`: it has the privileges of
/// `owner` (the rule for checks, renewals and releases), or it may read `lease.leases`.
fn may_see_tokens(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    // SAFETY: role and ACL lookups on valid OIDs, inside a transaction.
    unsafe {
        pg_sys::has_privs_of_role(role, owner)
            || pg_sys::pg_class_aclcheck(store::lease_table(), role, pg_sys::ACL_SELECT as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// `lease._lease_row(resource)`: the live lease on `resource`, as `lease_info` shows it: the
/// token only to a caller that [`may_see_tokens`] (the caller is the role that calls
/// `lease_info`, which runs as its caller). The row is read as the table's owner.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn lease_row(
    resource: &str,
) -> TableIterator<
    'static,
    (
        name!(resource, String),
        name!(holder, String),
        name!(token, Option<i64>),
        name!(owner, String),
        name!(acquired_at, pgrx::datum::TimestampWithTimeZone),
        name!(renewed_at, pgrx::datum::TimestampWithTimeZone),
        name!(expires_at, pgrx::datum::TimestampWithTimeZone),
        name!(session_pid, Option<i32>),
        name!(application_name, Option<String>),
    ),
> {
    let store = Store::open();
    let row = store.info(resource, clock_now()).map(|lease| {
        let token = may_see_tokens(store.caller(), lease.owner).then_some(lease.token);
        (
            resource.to_owned(),
            lease.holder,
            token,
            lease.owner_name,
            lease.acquired_at,
            lease.renewed_at,
            lease.expires_at,
            lease.session_pid,
            lease.application_name,
        )
    });
    TableIterator::new(row)
}

/// `lease._stats()`: the counters behind `lease.stats`.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn stats_counters() -> TableIterator<
    'static,
    (
        name!(acquired, i64),
        name!(reacquired, i64),
        name!(conflicts, i64),
        name!(renewed, i64),
        name!(released, i64),
        name!(expired_ttl, i64),
        name!(expired_session_end, i64),
        name!(revoked, i64),
        name!(waits, i64),
        name!(wait_seconds, f64),
        name!(handovers, i64),
        name!(events_dropped, i64),
    ),
> {
    let c = stats::read().map(|value| value as i64);
    TableIterator::once((
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        c[5],
        c[6],
        c[7],
        c[8],
        c[9] as f64 / 1e6,
        c[10],
        c[11],
    ))
}

/// Sets the counters of `lease.stats` back to zero. Not executable by PUBLIC.
#[pg_extern(sql = false)]
fn lease_stats_reset() {
    stats::reset();
}

/// `lease._valid_resource(resource)`: returns `resource` if it is a valid resource name and
/// raises the documented error otherwise; `lease_info` filters through it.
#[pg_extern(sql = false)]
fn valid_resource(resource: Option<&str>) -> String {
    name_argument(resource, "resource", MAX_RESOURCE_BYTES).or_raise().to_owned()
}

/// What an acquire asks for, validated.
struct Request<'a> {
    resource: &'a str,
    holder: &'a str,
    ttl: i64,
    session_bound: bool,
    /// Grant only if there is no lease row at all: no expired lease taken over, no lease of
    /// the caller's extended.
    only_if_free: bool,
}

/// The outcome of one attempt to acquire.
enum Attempt {
    /// A new grant, or a takeover: the resource stays locked in [`Mode::Change`].
    Granted(i64),
    /// The caller's own live lease, extended: the resource stays locked in [`Mode::Extend`].
    Extended(i64),
    /// Someone else holds it until this time (server clock).
    Held(Timestamp),
    /// Free, but queued waiters come first.
    Yielded,
    /// Another transaction is changing, extending or fencing the resource right now, so the
    /// answer is not known without waiting for it.
    Busy,
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

pub fn acquire(
    resource: Option<&str>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    wait: Option<Interval>,
    session_bound: Option<bool>,
) -> LeaseResult<Option<i64>> {
    let request = Request {
        resource: name_argument(resource, "resource", MAX_RESOURCE_BYTES)?,
        holder: name_argument(holder, "holder", MAX_HOLDER_BYTES)?,
        ttl: ttl_argument(ttl)?,
        session_bound: session_bound.unwrap_or(false),
        only_if_free: false,
    };
    let wait = wait_argument(wait)?;
    if wait > 0 && crate::shared::get().is_none() {
        return Err(LeaseError::NeedsPreload("waiting for a lease"));
    }
    ensure_primary()?;
    // First as a call that does not wait: a holder's re-acquire of its own lease, and a free
    // lease nobody queues for, are answered at once.
    let token = if wait == 0 {
        attempt_now(&Store::open(), &request, None).token()
    } else {
        // In a subtransaction, as every attempt of a wait: a waiter keeps no lock while it sleeps.
        match in_subtransaction(|| attempt_now(&Store::open(), &request, None)).token() {
            Some(token) => Some(token),
            None => wait_for(&request, wait)?,
        }
    };
    if token.is_none() {
        stats::add(Counter::Conflicts, 1);
    }
    Ok(token)
}

/// The optional arguments of `lease_acquire_any`.
pub struct Claim {
    pub max_count: Option<i32>,
    pub session_bound: Option<bool>,
    pub snapshot_consistent: Option<bool>,
}

pub fn acquire_any(
    resources: Option<Array<&str>>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    claim: Claim,
) -> LeaseResult<Vec<(String, i64)>> {
    let resources = resources.ok_or(LeaseError::NullArgument("resources"))?;
    // Every element is checked before anything is granted: bad input changes nothing.
    let candidates = resources
        .iter()
        .map(|resource| name_argument(resource, "resources element", MAX_RESOURCE_BYTES))
        .collect::<LeaseResult<Vec<&str>>>()?;
    let holder = name_argument(holder, "holder", MAX_HOLDER_BYTES)?;
    let ttl = ttl_argument(ttl)?;
    let max_count = match claim.max_count {
        None => 1,
        Some(count) if count < 1 => {
            return Err(LeaseError::invalid("max_count", format_args!("must be at least 1, not {count}")))
        }
        Some(count) => count as usize,
    };
    let session_bound = claim.session_bound.unwrap_or(false);
    let snapshot_consistent = claim.snapshot_consistent.unwrap_or(false);
    ensure_primary()?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }

    let store = Store::open();
    // Candidates someone else holds are skipped without taking their lock. The test is a hint;
    // each grant is decided under the lock.
    let mut held_by_others = store.held_by_others(&candidates, holder, clock_now());
    // Duplicates are taken once: a name is looked at only the first time it comes.
    let mut seen = std::collections::HashSet::new();
    let mut granted = Vec::new();
    for &resource in &candidates {
        // A pending cancel or timeout ends a long claim here; abort releases what it holds.
        pg_sys::check_for_interrupts!();
        if !seen.insert(resource) || held_by_others(resource) {
            continue;
        }
        let request = Request { resource, holder, ttl, session_bound, only_if_free: snapshot_consistent };
        let outcome = match barrier::try_lock(resource, Mode::Change) {
            Some(held) if snapshot_consistent && store.changed_since_snapshot(resource) => {
                held.release_if_unused_before();
                continue;
            }
            Some(held) => attempt_holding(held, &store, &request, None),
            // Being changed or fenced by another transaction right now (most likely another
            // claimer): skipped, unless it is the caller's own live lease and only fences
            // stand in the way, as for lease_acquire.
            None => attempt_while_busy(&store, &request, None, None, false),
        };
        if let Some(token) = outcome.token() {
            granted.push((resource.to_owned(), token));
            if granted.len() == max_count {
                break;
            }
        }
    }
    Ok(granted)
}

/// Counts a wait and, when it ends in any way, the time it took.
struct WaitClock(Timestamp);

impl Drop for WaitClock {
    fn drop(&mut self) {
        stats::add(Counter::WaitMicros, (clock_now() - self.0).max(0) as u64);
    }
}

/// Queues for the lease until it is granted (its token), `wait` microseconds pass (None), or
/// `lock_timeout` passes first (55P03). Cancellation and `statement_timeout` raise 57014.
/// Whatever other transactions do, it returns within `wait` plus the time one attempt takes:
/// it never waits in the lock manager, only on its latch, which commits and aborts that free
/// the resource set, and which it sets itself every [`BUSY_RETRY_MS`] while another
/// transaction holds the resource's lock.
fn wait_for(request: &Request, wait: i64) -> LeaseResult<Option<i64>> {
    let key = barrier::resource_key(request.resource);
    let ticket = waiting::enqueue(key).ok_or(LeaseError::NeedsPreload("waiting for a lease"))?;
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
        if ticket.is_head() {
            // SAFETY: the context lives until the end of this function, and is reset only after
            // the attempt, whose outcome holds no pointer into it.
            let outcome = unsafe {
                let outcome =
                    attempts.switch_to(|_| in_subtransaction(|| attempt_waiting(request, ticket.number())));
                attempts.reset();
                outcome
            };
            match outcome {
                Attempt::Granted(token) => {
                    stats::add(Counter::Handovers, 1);
                    return Ok(Some(token));
                }
                Attempt::Extended(token) => return Ok(Some(token)),
                Attempt::Held(expires_at) => sleep_until = sleep_until.min(expires_at),
                Attempt::Busy => sleep_until = sleep_until.min(clock_now() + BUSY_RETRY_MS * 1_000),
                Attempt::Yielded => {}
            }
        }
        let now = clock_now();
        if now >= deadline {
            return Ok(None);
        }
        if now >= lock_deadline {
            return Err(LeaseError::LockTimeout { resource: request.resource.into() });
        }
        waiting::sleep((sleep_until - now + 999) / 1_000);
    }
}

/// Runs one attempt in an internal subtransaction that is kept if the lease was granted and
/// rolled back otherwise, so that a waiter holds no lock while it sleeps.
fn in_subtransaction(attempt: impl FnOnce() -> Attempt) -> Attempt {
    transaction::in_subtransaction(attempt, |outcome| outcome.token().is_some())
}

/// The attempt of a waiter at the head of its queue: decided as a call without `wait`
/// decides, with its ticket. While another holder holds the lease it sleeps without taking any
/// lock, and it never queues in the lock manager, where an exclusive request would hold up the
/// holder's renewals and every fence behind it.
fn attempt_waiting(request: &Request, ticket: u64) -> Attempt {
    attempt_now(&Store::open(), request, Some(ticket))
}

/// What a read without the resource's lock shows of its lease: a hint, decided again under the
/// lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sight {
    /// No lease, an expired one, or a session-bound one whose session ended.
    Free,
    /// The caller's own live lease (same holder name, same role).
    Ours,
    /// Another holder's live lease, until this time (server clock).
    Others(Timestamp),
}

fn look(store: &Store, request: &Request) -> Sight {
    let Some(current) = store.current(request.resource) else { return Sight::Free };
    // A session-bound lease whose session ended is free: its session lock tells (a try-lock).
    let live = current.expires_at > clock_now()
        && !(current.session_bound && session::holder_is_gone(current.token));
    match (live, current.holder == request.holder && current.owner == store.caller()) {
        (false, _) => Sight::Free,
        (true, true) => Sight::Ours,
        (true, false) => Sight::Others(current.expires_at),
    }
}

/// One attempt that never waits for another transaction: with the resource's lock free, it
/// decides as usual; while another transaction holds the lock, see [`attempt_while_busy`].
fn attempt_now(store: &Store, request: &Request, ticket: Option<u64>) -> Attempt {
    // While anyone waits, a call that cannot win must not take the lock even for a moment: a
    // waiter at the head of its queue that found it busy would sleep again. (Without waiters the
    // lock is tried first, which saves a free grant a second read.)
    let sight = waiting::anyone_waits().then(|| look(store, request));
    match sight {
        Some(Sight::Others(until)) => return Attempt::Held(until),
        Some(Sight::Free) if ticket.is_none() && waiting::must_yield(request.resource, None) => {
            return Attempt::Yielded
        }
        _ => {}
    }
    match barrier::try_lock(request.resource, Mode::Change) {
        Some(held) => attempt_holding(held, store, request, ticket),
        None => attempt_while_busy(store, request, sight, ticket, true),
    }
}

/// The rest of [`attempt_now`] when another transaction holds the resource's lock (`sight`: the
/// read already made, if any). A lease another holder holds is refused at once. Otherwise the
/// lock is most likely held for a moment (the expiry worker removing the expired lease, another
/// acquirer's refused attempt): with `patient`, the call tries again, a millisecond apart, for
/// up to [`BUSY_RETRIES`] milliseconds (the caller's own live lease in [`Mode::Extend`], which
/// fences do not block) before it calls the resource busy. `lease_acquire_any` is not patient:
/// it skips at once, except for the caller's own live lease.
fn attempt_while_busy(
    store: &Store,
    request: &Request,
    sight: Option<Sight>,
    ticket: Option<u64>,
    patient: bool,
) -> Attempt {
    let ours = match sight.unwrap_or_else(|| look(store, request)) {
        Sight::Others(until) => return Attempt::Held(until),
        sight => sight == Sight::Ours && !request.only_if_free,
    };
    if !patient && !ours {
        return Attempt::Busy;
    }
    let mode = if ours { Mode::Extend } else { Mode::Change };
    let mut held = barrier::try_lock(request.resource, mode);
    for _ in 0..BUSY_RETRIES {
        if held.is_some() {
            break;
        }
        waiting::sleep(1);
        held = barrier::try_lock(request.resource, mode);
    }
    let Some(held) = held else { return Attempt::Busy };
    if mode == Mode::Change {
        return attempt_holding(held, store, request, ticket);
    }
    match extend_ours(store, request) {
        Some(outcome) => outcome,
        None => {
            held.release_if_unused_before();
            Attempt::Busy
        }
    }
}

/// As [`attempt_now`], with the resource's lock taken in [`Mode::Change`].
fn attempt_holding(held: barrier::Held, store: &Store, request: &Request, ticket: Option<u64>) -> Attempt {
    let outcome = attempt_locked(store, request, ticket);
    match outcome {
        Attempt::Granted(_) => {}
        // Only extended: fences need not wait for this transaction.
        Attempt::Extended(_) => held.downgrade(Mode::Extend),
        // Nothing changed: do not keep others out for the rest of the transaction.
        _ => held.release_if_unused_before(),
    }
    outcome
}

/// Raises 40001 if this transaction reads through a snapshot older than the last change of
/// the resource's lease: a write decided on the latest lease must not be made by a transaction
/// whose own reads are older.
fn ensure_snapshot_current(store: &Store, resource: &str) {
    if store.transaction_snapshot() && store.changed_since_snapshot(resource) {
        LeaseError::SerializationFailure { resource: resource.into() }.raise();
    }
}

fn attempt_locked(store: &Store, request: &Request, ticket: Option<u64>) -> Attempt {
    let Request { resource, holder, ttl, session_bound, only_if_free } = *request;
    let now = clock_now();
    let expires_at = now + ttl;
    let caller = store.caller();
    let yield_to_waiters = waiting::must_yield(resource, ticket);
    let application_name = if session_bound { current_application_name() } else { String::new() };
    // SAFETY: MyProcPid is set at backend start.
    let binding = session_bound
        .then(|| Binding { pid: unsafe { pg_sys::MyProcPid }, application_name: &application_name });
    let grant = |token: i64| {
        if session_bound && !session::bind(store, token) {
            // A new token's session lock is nobody's but ours.
            error!("lease: could not take the session lock of a new lease");
        }
        barrier::prove(resource);
        record(Kind::Acquired, resource, holder, token, Some(expires_at), now);
        Attempt::Granted(token)
    };
    let Some(current) = store.current(resource) else {
        if yield_to_waiters {
            return Attempt::Yielded;
        }
        ensure_snapshot_current(store, resource);
        // Free: a token is taken only now, so a refused call uses up no token number.
        let token = store.next_token();
        if store.insert(resource, holder, token, caller, now, expires_at, binding) {
            return grant(token);
        }
        // Under our lock a row can appear only to an older snapshot, and then the insert has
        // raised a serialization failure already.
        return Attempt::Held(now);
    };
    if only_if_free {
        return Attempt::Held(current.expires_at);
    }
    let ended = if current.expires_at <= now {
        Some(Reason::Ttl)
    } else if current.session_bound && session::holder_is_gone(current.token) {
        Some(Reason::SessionEnded)
    } else {
        None
    };
    if let Some(reason) = ended {
        if yield_to_waiters {
            return Attempt::Yielded;
        }
        ensure_snapshot_current(store, resource);
        let token = store.next_token();
        if !store.take_over(resource, current.token, holder, token, caller, now, expires_at, binding) {
            return Attempt::Held(now);
        }
        // Not swept yet: announce the old token's end before the new grant.
        let mut expired = expiry::expired_event(
            resource.to_owned(),
            current.holder,
            current.token,
            current.expires_at,
            now,
        );
        expired.reason = reason;
        events::record(expired);
        return grant(token);
    }
    extend_ours(store, request).unwrap_or(Attempt::Held(current.expires_at))
}

/// The caller's re-acquire of its own live lease (same holder name, same role): moves the
/// expiry to now + ttl and returns the same token; None if the lease is not the caller's or
/// has expired. The caller holds the resource's lock in [`Mode::Change`] or [`Mode::Extend`].
/// With `session_bound`, a lease not bound yet is bound to this session; one bound to another
/// live session raises 55006.
fn extend_ours(store: &Store, request: &Request) -> Option<Attempt> {
    let Request { resource, holder, ttl, session_bound, .. } = *request;
    let now = clock_now();
    let current = store.current(resource)?;
    if current.holder != holder || current.owner != store.caller() || current.expires_at <= now {
        return None;
    }
    if current.session_bound && session::holder_is_gone(current.token) {
        return None; // ended with its session: not the caller's any more
    }
    ensure_snapshot_current(store, resource);
    let expires_at = now + ttl;
    store.extend(resource, current.token, now, expires_at)?;
    if session_bound && !session::is_bound_here(current.token) {
        if !session::bind(store, current.token) {
            LeaseError::BoundElsewhere { resource: resource.into() }.raise();
        }
        let application_name = current_application_name();
        // SAFETY: MyProcPid is set at backend start.
        let binding = Binding { pid: unsafe { pg_sys::MyProcPid }, application_name: &application_name };
        store.bind(resource, current.token, binding);
    }
    barrier::prove(resource);
    stats::add(Counter::Reacquired, 1);
    record(Kind::Renewed, resource, holder, current.token, Some(expires_at), now);
    Some(Attempt::Extended(current.token))
}

/// The session's application_name.
fn current_application_name() -> String {
    // SAFETY: application_name is a GUC string, NULL or NUL-terminated.
    unsafe {
        let name = pg_sys::application_name;
        if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

pub fn renew(resource: Option<&str>, token: Option<i64>, ttl: Option<Interval>) -> LeaseResult<bool> {
    let resource = name_argument(resource, "resource", MAX_RESOURCE_BYTES)?;
    let token = token_argument(token)?;
    let ttl = ttl_argument(ttl)?;
    ensure_primary()?;

    // A renewal only makes the lease live longer: fences do not hold it up.
    let Some((held, store)) = lock_if_held(resource, token, Mode::Extend)? else { return Ok(false) };
    let now = clock_now();
    let expires_at = now + ttl;
    let Some(lease) = store.extend(resource, token, now, expires_at) else {
        drop(store);
        held.release_if_unused_before();
        return Ok(false);
    };
    ensure_member(&store, resource, lease.owner)?;
    barrier::prove(resource);
    record(Kind::Renewed, resource, &lease.holder, token, Some(expires_at), now);
    Ok(true)
}

pub fn release(resource: Option<&str>, token: Option<i64>) -> LeaseResult<bool> {
    let resource = name_argument(resource, "resource", MAX_RESOURCE_BYTES)?;
    let token = token_argument(token)?;
    ensure_primary()?;

    let Some((held, store)) = lock_if_held(resource, token, Mode::Change)? else { return Ok(false) };
    let now = clock_now();
    let Some(lease) = store.delete(resource, token, now) else {
        drop(store);
        held.release_if_unused_before();
        return Ok(false);
    };
    ensure_member(&store, resource, lease.owner)?;
    session::unbind_at_commit(token);
    barrier::prove(resource);
    record(Kind::Released, resource, &lease.holder, token, None, now);
    Ok(true)
}

/// For a renewal or a release: takes the resource's lock in `mode`, but queues for it only if
/// `token` holds the lease as last committed and the caller is a member of its owner role, so
/// that a call that cannot succeed never queues in the lock manager (where it would hold up the
/// requests behind it, the holder's own renewals among them); returns the lock and the store,
/// or None (the answer is false), or 42501. Under the lock the statement decides again. Under a
/// transaction-wide snapshot, a lease that changed since the snapshot is 40001: the statement
/// that would write it cannot see it.
fn lock_if_held(resource: &str, token: i64, mode: Mode) -> LeaseResult<Option<(barrier::Held, Store)>> {
    let holds = |store: &Store| -> LeaseResult<bool> {
        match store.current(resource) {
            Some(lease) if lease.token == token && lease.expires_at > clock_now() => {
                ensure_member(store, resource, lease.owner).map(|()| true)
            }
            _ => Ok(false),
        }
    };
    let store = Store::open();
    let held = match barrier::try_lock(resource, mode) {
        Some(held) => held,
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
            held.release_if_unused_before();
            return Ok(None);
        }
        ensure_snapshot_current(&store, resource);
    }
    Ok(Some((held, store)))
}

/// Whether `token` holds `resource` for the caller: it holds the lease now and the caller is a
/// member of the lease's owner role. If so, no other holder can be granted the resource until
/// this transaction ends. `Err(NotLeaseOwner)` when the token holds but the caller is not a
/// member; `lease_check` answers false for it.
pub fn check_as_member(resource: &str, token: i64) -> LeaseResult<bool> {
    let held = barrier::lock(resource, Mode::Fence);
    let now = clock_now();
    let store = Store::open();
    let outcome = match store.holds(resource, token, now) {
        None => Ok(false),
        Some(owner) => ensure_member(&store, resource, owner).map(|()| true),
    };
    drop(store);
    match outcome {
        Ok(true) => barrier::prove(resource),
        // A failed fence protects nothing: it must not hold up the lease's owner.
        _ => held.release_if_unused_before(),
    }
    outcome
}

pub fn check(resource: Option<&str>, token: Option<i64>) -> LeaseResult<bool> {
    let resource = name_argument(resource, "resource", MAX_RESOURCE_BYTES)?;
    let token = token_argument(token)?;
    ensure_primary()?;
    match check_as_member(resource, token) {
        Err(LeaseError::NotLeaseOwner { .. }) => Ok(false),
        outcome => outcome,
    }
}

/// Records an event of this call (announced if the transaction commits).
fn record(
    kind: Kind,
    resource: &str,
    holder: &str,
    token: i64,
    expires_at: Option<Timestamp>,
    at: Timestamp,
) {
    let (resource, holder) = (resource.to_owned(), holder.to_owned());
    events::record(Event { kind, reason: Reason::None, resource, holder, token, expires_at, at });
}

/// The caller must be a member of the lease's owner role to renew, release or fence it.
/// Raising after a change aborts the transaction, so the change is undone.
fn ensure_member(store: &Store, resource: &str, owner: pg_sys::Oid) -> LeaseResult<()> {
    // SAFETY: catalog lookups on valid role OIDs.
    unsafe {
        if pg_sys::has_privs_of_role(store.caller(), owner) {
            return Ok(());
        }
        let name = pg_sys::GetUserNameFromId(owner, true);
        let owner = match name.is_null() {
            true => owner.to_u32().to_string(),
            false => std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned(),
        };
        Err(LeaseError::NotLeaseOwner { resource: resource.into(), owner })
    }
}

fn ensure_primary() -> LeaseResult<()> {
    // SAFETY: RecoveryInProgress reads shared state under its own lock.
    match unsafe { pg_sys::RecoveryInProgress() } {
        true => Err(LeaseError::ReadOnlyServer),
        false => Ok(()),
    }
}

/// A resource or holder name: not NULL, not blank, at most `max_bytes` bytes.
fn name_argument<'a>(
    value: Option<&'a str>,
    argument: &'static str,
    max_bytes: usize,
) -> LeaseResult<&'a str> {
    let value = value.ok_or(LeaseError::NullArgument(argument))?;
    if value.trim().is_empty() {
        return Err(LeaseError::invalid(argument, "must not be empty or blank"));
    }
    if value.len() > max_bytes {
        return Err(LeaseError::invalid(
            argument,
            format_args!("is {} bytes long; the limit is {max_bytes} bytes", value.len()),
        ));
    }
    Ok(value)
}

fn token_argument(token: Option<i64>) -> LeaseResult<i64> {
    match token {
        None => Err(LeaseError::NullArgument("token")),
        Some(token) if token <= 0 => {
            Err(LeaseError::invalid("token", format_args!("must be positive, not {token}")))
        }
        Some(token) => Ok(token),
    }
}

/// The ttl in microseconds: NULL means `lease.default_ttl`; it must be positive and at most
/// `lease.max_ttl`.
fn ttl_argument(ttl: Option<Interval>) -> LeaseResult<i64> {
    let (usecs, argument) = match ttl {
        None => (i128::from(settings::default_ttl_usecs()), "lease.default_ttl"),
        Some(ttl) => (interval_usecs(&ttl), "ttl"),
    };
    if usecs <= 0 {
        return Err(LeaseError::invalid(argument, "must be greater than zero"));
    }
    let max = settings::max_ttl_usecs();
    if usecs > i128::from(max) {
        return Err(LeaseError::invalid(
            argument,
            format_args!("must not exceed lease.max_ttl ({} s)", max / 1_000_000),
        ));
    }
    Ok(usecs as i64)
}

/// The wait in microseconds: NULL means no wait; it must not be negative.
fn wait_argument(wait: Option<Interval>) -> LeaseResult<i64> {
    let usecs = wait.map_or(0, |wait| interval_usecs(&wait));
    if usecs < 0 {
        return Err(LeaseError::invalid("wait", "must not be negative"));
    }
    Ok(usecs.min(i128::from(i64::MAX)) as i64)
}

/// An interval's length as a duration: a day is 24 hours and a month 30 days, as
/// `extract(epoch from interval)` counts them.
fn interval_usecs(interval: &Interval) -> i128 {
    (i128::from(interval.months()) * DAYS_PER_MONTH + i128::from(interval.days())) * USECS_PER_DAY
        + i128::from(interval.micros())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn acquire(sql_args: &str) -> Option<i64> {
        Spi::get_one(&format!("SELECT lease_acquire({sql_args})")).unwrap()
    }

    fn boolean(sql: &str) -> bool {
        Spi::get_one::<bool>(sql).unwrap().unwrap()
    }

    /// Waits (without guessing a duration) until the server clock is past the lease's expiry.
    fn wait_until_expired(resource: &str) {
        Spi::run(&format!(
            "DO $$ BEGIN
               WHILE clock_timestamp() <= (SELECT expires_at FROM lease.leases WHERE resource = '{resource}') LOOP
                 PERFORM pg_sleep(0.001);
               END LOOP;
             END $$"
        ))
        .unwrap();
    }

    #[pg_test]
    fn tokens_increase_across_resources() {
        let a = acquire("'r:a', 'h'").unwrap();
        let b = acquire("'r:b', 'h'").unwrap();
        let c = acquire("'r:c', 'other'").unwrap();
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[pg_test]
    fn second_holder_is_refused() {
        assert!(acquire("'t:second_holder_is_refused', 'one', '1 min'").is_some());
        assert_eq!(acquire("'t:second_holder_is_refused', 'two', '1 min'"), None);
    }

    #[pg_test]
    fn reacquire_by_same_holder_returns_same_token_and_extends() {
        let token =
            acquire("'t:reacquire_by_same_holder_returns_same_token_and_extends', 'one', '1 min'").unwrap();
        assert_eq!(
            acquire("'t:reacquire_by_same_holder_returns_same_token_and_extends', 'one', '2 min'"),
            Some(token)
        );
        assert!(boolean(
            "SELECT expires_at > clock_timestamp() + interval '90 s' FROM lease.leases WHERE resource = 't:reacquire_by_same_holder_returns_same_token_and_extends'"
        ));
    }

    #[pg_test]
    fn expired_lease_is_taken_over_with_a_larger_token() {
        let old = acquire("'t:expired_lease_is_taken_over_with_a_larger_token', 'one', '1 ms'").unwrap();
        wait_until_expired("t:expired_lease_is_taken_over_with_a_larger_token");
        let new = acquire("'t:expired_lease_is_taken_over_with_a_larger_token', 'two', '1 min'").unwrap();
        assert!(new > old);
        assert!(!boolean(&format!(
            "SELECT lease_renew('t:expired_lease_is_taken_over_with_a_larger_token', {old})"
        )));
        assert!(!boolean(&format!(
            "SELECT lease_release('t:expired_lease_is_taken_over_with_a_larger_token', {old})"
        )));
        assert!(!boolean(&format!(
            "SELECT lease_check('t:expired_lease_is_taken_over_with_a_larger_token', {old})"
        )));
        assert!(boolean(&format!(
            "SELECT lease_check('t:expired_lease_is_taken_over_with_a_larger_token', {new})"
        )));
    }

    #[pg_test]
    fn expired_lease_cannot_be_renewed_even_if_nobody_took_it() {
        let token =
            acquire("'t:expired_lease_cannot_be_renewed_even_if_nobody_took_it', 'one', '1 ms'").unwrap();
        wait_until_expired("t:expired_lease_cannot_be_renewed_even_if_nobody_took_it");
        assert!(!boolean(&format!("SELECT lease_renew('t:expired_lease_cannot_be_renewed_even_if_nobody_took_it', {token}, '1 min')")));
        assert!(!boolean(&format!(
            "SELECT lease_release('t:expired_lease_cannot_be_renewed_even_if_nobody_took_it', {token})"
        )));
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM lease_info('t:expired_lease_cannot_be_renewed_even_if_nobody_took_it')"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn release_is_true_once() {
        let token = acquire("'t:release_is_true_once', 'one'").unwrap();
        assert!(boolean(&format!("SELECT lease_release('t:release_is_true_once', {token})")));
        assert!(!boolean(&format!("SELECT lease_release('t:release_is_true_once', {token})")));
        assert!(acquire("'t:release_is_true_once', 'two'").is_some());
    }

    #[pg_test]
    fn null_ttl_uses_lease_default_ttl() {
        Spi::run("SET LOCAL lease.default_ttl = '5min'").unwrap();
        acquire("'t:null_ttl_uses_lease_default_ttl', 'one'").unwrap();
        assert!(boolean(
            "SELECT expires_at - acquired_at = interval '5 min' FROM lease.leases WHERE resource = 't:null_ttl_uses_lease_default_ttl'"
        ));
    }

    #[pg_test(
        error = "lease on resource \"t:assert_raises_for_a_token_that_does_not_hold\" is not held with token 999"
    )]
    fn assert_raises_for_a_token_that_does_not_hold() {
        acquire("'t:assert_raises_for_a_token_that_does_not_hold', 'one'").unwrap();
        Spi::run("SELECT lease_assert('t:assert_raises_for_a_token_that_does_not_hold', 999)").unwrap();
    }

    #[pg_test(error = "resource must not be null")]
    fn null_resource_is_rejected() {
        acquire("NULL, 'h'");
    }

    #[pg_test(error = "holder must not be empty or blank")]
    fn blank_holder_is_rejected() {
        acquire("'t:blank_holder_is_rejected', E' \\t\\n'");
    }

    #[pg_test(error = "resource is 513 bytes long; the limit is 512 bytes")]
    fn long_resource_is_rejected() {
        acquire("repeat('x', 513), 'h'");
    }

    #[pg_test(error = "ttl must not exceed lease.max_ttl (86400 s)")]
    fn ttl_over_max_is_rejected() {
        acquire("'t:ttl_over_max_is_rejected', 'h', '1 day 1 second'");
    }

    #[pg_test(error = "lease.default_ttl must not exceed lease.max_ttl (86400 s)")]
    fn default_ttl_over_max_is_rejected() {
        Spi::run("SET LOCAL lease.default_ttl = '2d'").unwrap();
        acquire("'t:default_ttl_over_max_is_rejected', 'h'");
    }

    #[pg_test(error = "waiting for a lease requires lease in shared_preload_libraries")]
    fn waiting_needs_preloading() {
        acquire("'t:waiting_needs_preloading', 'h', '1 min', '1 s'");
    }

    #[pg_test]
    fn session_bound_lease_works_without_preloading() {
        let token =
            acquire("'t:session_bound_lease_works_without_preloading', 'h', '1 min', NULL, true").unwrap();
        let pid: i32 = Spi::get_one(
            "SELECT session_pid FROM lease_info('t:session_bound_lease_works_without_preloading')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(pid, Spi::get_one::<i32>("SELECT pg_backend_pid()").unwrap().unwrap());
        assert!(boolean(&format!(
            "SELECT lease_release('t:session_bound_lease_works_without_preloading', {token})"
        )));
    }

    #[pg_test(error = "token must be positive, not 0")]
    fn zero_token_is_rejected() {
        Spi::run("SELECT lease_check('t:zero_token_is_rejected', 0)").unwrap();
    }

    #[pg_test]
    fn interval_length_counts_months_as_30_days() {
        let interval = pgrx::datum::Interval::new(1, 2, 3).unwrap();
        assert_eq!(super::interval_usecs(&interval), (32 * 86_400_000_000i128) + 3);
    }

    #[pg_test]
    fn resource_keys_differ_for_similar_names() {
        use crate::barrier::resource_key;
        assert_eq!(resource_key("job:1"), resource_key("job:1"));
        assert_ne!(resource_key("job:1"), resource_key("job:2"));
        assert_ne!(resource_key(""), resource_key("\0"));
    }
}
