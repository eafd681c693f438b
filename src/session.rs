//! Session-bound leases: leases that end when the holder's database session ends.
//!
//! The holder's backend takes a session-level advisory lock keyed by the lease's token (in a
//! lock space of its own, `pg_locks.objsubid` = [`SESSION_LOCK_SPACE`]) and keeps it for the
//! life of the lease. PostgreSQL releases it when the session ends in any way, so "the lock is
//! free" means "the holder is gone", and a reused pid cannot fool the check. Tokens are unique,
//! so no two leases ever share such a lock.
//!
//! When a backend that holds session locks exits, it tells the expiry worker, which expires its
//! leases (reason `session_ended`); an acquire that finds such a lease takes it over at once.
//! A lock taken by a transaction that aborts is released again; a lease released by its holder
//! drops the lock at commit; locks of leases that ended otherwise are dropped the next time the
//! holder binds a lease.
//!
//! Uses barrier (the lock tag), store and events (the database slot, to tell the worker).

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use pgrx::pg_sys;

use crate::barrier::advisory_tag;
use crate::events::database::{databases, Databases};
use crate::store::{Binding, Store};
use crate::vocabulary::nesting_level;

/// `locktag_field4` of session locks.
pub const SESSION_LOCK_SPACE: u16 = 0x4C53;

/// Above this many held session locks, binding first drops those of leases that ended.
const TIDY_THRESHOLD: usize = 64;

thread_local! {
    /// Tokens whose session lock this backend holds for a committed lease.
    static BOUND: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
    /// Session locks taken in the current transaction, with the subtransaction level.
    static BOUND_NOW: RefCell<Vec<(i32, i64)>> = const { RefCell::new(Vec::new()) };
    /// Session locks to drop when the current transaction commits, with the subtransaction
    /// level of the release that asked for it.
    static UNBIND_AT_COMMIT: RefCell<Vec<(i32, i64)>> = const { RefCell::new(Vec::new()) };
}

fn tag(token: i64) -> pg_sys::LOCKTAG {
    advisory_tag(SESSION_LOCK_SPACE, token as u64)
}

/// Binds the lease with `token` to this session (at grant time, inside the granting
/// transaction; undone if it aborts). False, with nothing taken, if another session holds the
/// lease's session lock.
pub fn bind(store: &Store, token: i64) -> bool {
    if is_bound_here(token) {
        return true;
    }
    tidy(store);
    let tag = tag(token);
    // SAFETY: a session-level try-lock on the token's own key.
    let result = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true, true) };
    if result == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
        return false;
    }
    let level = nesting_level();
    BOUND_NOW.with(|taken| taken.borrow_mut().push((level, token)));
    register_exit_callback();
    true
}

/// Whether this session holds the session lock of the lease with `token`.
pub fn is_bound_here(token: i64) -> bool {
    BOUND.with(|bound| bound.borrow().contains(&token))
        || BOUND_NOW.with(|taken| taken.borrow().iter().any(|(_, t)| *t == token))
}

/// The lease with `token` is being released: drop its session lock at commit, if this session
/// holds it (bound in an earlier transaction or in this one).
pub fn unbind_at_commit(token: i64) {
    if is_bound_here(token) {
        let level = nesting_level();
        UNBIND_AT_COMMIT.with(|drop| drop.borrow_mut().push((level, token)));
    }
}

/// Whether the session that holds the session-bound lease with `token` has ended. Takes the
/// lock, if free, until the end of the current transaction.
pub fn holder_is_gone(token: i64) -> bool {
    if is_bound_here(token) {
        return false;
    }
    let tag = tag(token);
    // SAFETY: a transaction-level try-lock; released at transaction end.
    let result = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, true) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Whether the session that opened the session-bound lifeline `id` has ended. Unlike
/// [`holder_is_gone`] it keeps nothing: a lifeline's leases are many resources, and checkers of
/// different ones must not take each other for the lifeline's session (a lock that conflicts
/// with the owner's, not with other checkers', tried and given back at once).
pub fn lifeline_holder_is_gone(id: i64) -> bool {
    if is_bound_here(id) {
        return false;
    }
    let tag = tag(id);
    let mode = pg_sys::RowShareLock as pg_sys::LOCKMODE;
    // SAFETY: a transaction-level try-lock, released at once if taken (and never held before:
    // checkers take nothing else on this tag).
    unsafe {
        match pg_sys::LockAcquire(&tag, mode, false, true) {
            pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL => false,
            pg_sys::LockAcquireResult::LOCKACQUIRE_OK => {
                pg_sys::LockRelease(&tag, mode, false);
                true
            }
            _ => true,
        }
    }
}

/// Whether this transaction bound or unbinds anything: such a transaction cannot be prepared
/// (its session locks are this session's).
pub fn any_pending() -> bool {
    BOUND_NOW.with(|taken| !taken.borrow().is_empty())
        || UNBIND_AT_COMMIT.with(|drop| !drop.borrow().is_empty())
}

/// Drops, at commit, held locks whose leases no longer exist, once there are many of them.
fn tidy(store: &Store) {
    let held = BOUND.with(|bound| bound.borrow().clone());
    if held.len() < TIDY_THRESHOLD {
        return;
    }
    // The table as this transaction sees it: a lease it released itself looks gone, so its
    // lock is dropped only if the transaction commits (an abort brings the lease back, and
    // its lock must still be held then).
    let alive = store.session_tokens_alive(&held);
    let level = nesting_level();
    UNBIND_AT_COMMIT.with(|drop| {
        let mut drop = drop.borrow_mut();
        for token in held.into_iter().filter(|token| !alive.contains(token)) {
            if !drop.iter().any(|(_, queued)| *queued == token) {
                drop.push((level, token));
            }
        }
    });
}

fn release_session_lock(token: i64) {
    let tag = tag(token);
    // SAFETY: releases a session lock this backend holds.
    unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true) };
}

/// At commit: locks taken become held; released leases drop theirs.
pub fn at_commit() {
    let taken: Vec<i64> = BOUND_NOW.with(|taken| taken.borrow_mut().drain(..).map(|(_, t)| t).collect());
    let mut dropped: Vec<i64> =
        UNBIND_AT_COMMIT.with(|drop| drop.borrow_mut().drain(..).map(|(_, t)| t).collect());
    // A lock is released once, however many times it was queued (a release and a tidy).
    dropped.sort_unstable();
    dropped.dedup();
    BOUND.with(|bound| {
        let mut held = bound.borrow_mut();
        held.extend(taken);
        for token in dropped {
            release_session_lock(token);
            held.retain(|t| *t != token);
        }
    });
}

/// At abort: locks taken by the transaction are released.
pub fn at_abort() {
    for (_, token) in BOUND_NOW.with(|taken| taken.borrow_mut().drain(..).collect::<Vec<_>>()) {
        release_session_lock(token);
    }
    UNBIND_AT_COMMIT.with(|drop| drop.borrow_mut().clear());
}

/// At subtransaction abort: locks taken at `level` or deeper are released, and releases made
/// there never happened.
pub fn at_subtransaction_abort(level: i32) {
    UNBIND_AT_COMMIT.with(|drop| drop.borrow_mut().retain(|(at, _)| *at < level));
    let undone: Vec<i64> = BOUND_NOW.with(|taken| {
        let mut taken = taken.borrow_mut();
        let undone = taken.iter().filter(|(at, _)| *at >= level).map(|(_, t)| *t).collect();
        taken.retain(|(at, _)| *at < level);
        undone
    });
    for token in undone {
        release_session_lock(token);
    }
}

/// At subtransaction commit: its locks and releases belong to the parent now.
pub fn at_subtransaction_commit(level: i32) {
    for list in [&BOUND_NOW, &UNBIND_AT_COMMIT] {
        list.with(|entries| {
            for (at, _) in entries.borrow_mut().iter_mut().filter(|(at, _)| *at >= level) {
                *at = level - 1;
            }
        });
    }
}

fn register_exit_callback() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a static callback once per backend.
    REGISTERED.call_once(|| unsafe { pg_sys::on_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) });
}

/// Runs after the session's locks were released (after `before_shmem_exit` callbacks):
/// tells the worker to expire this session's leases.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _argument: pg_sys::Datum) {
    let bound = BOUND.with(|bound| !bound.borrow().is_empty());
    if let (true, Some(slot)) = (bound, databases().and_then(Databases::assigned_to_my_database)) {
        slot.sessions_ended.store(true, Ordering::Release);
        slot.wake_worker();
    }
}

/// This session's binding, for a session-bound lease: its pid and `application_name`.
pub fn this_session(application_name: &str) -> Binding<'_> {
    // SAFETY: MyProcPid is set at backend start.
    Binding { pid: unsafe { pg_sys::MyProcPid }, application_name }
}

/// The session's `application_name`.
pub fn application_name() -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_lock_space_is_its_own() {
        let mut spaces = crate::barrier::SPACES.to_vec();
        spaces.push(super::SESSION_LOCK_SPACE);
        let count = spaces.len();
        spaces.sort_unstable();
        spaces.dedup();
        assert_eq!(spaces.len(), count, "a lock space is used twice");
        // pg_advisory_lock's own keys use 1 and 2.
        assert!(spaces.iter().all(|&space| space > 2));
    }
}
