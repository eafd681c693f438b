//! Waiting for a lease, first come first served.
//!
//! A call with `wait` > 0 takes a ticket and a slot in the shared waiter table
//! ([`crate::shared`]). Only the head of a resource's queue (its waiter with the smallest
//! ticket) tries to acquire; the others sleep on their latch. The head tries in a
//! subtransaction that is rolled back when the lease is still held, so that while it sleeps it
//! holds no lock on the lease table and no barrier lock. It sleeps until the lease's expiry or
//! its own deadline, whichever is first, unless woken earlier: a commit that frees the resource
//! (release, expiry, revocation, session end) sets the head's latch, and a head that leaves the
//! queue (granted, timed out, cancelled, or its session ended) wakes the next one.
//!
//! The rule for calls that do not wait: a grant goes to the queue's head while anyone is
//! queued, so an acquire without `wait` returns NULL for a free or expired lease that others
//! are waiting for. (Re-acquiring a lease one already holds is not a grant and is unaffected.)

use std::cell::Cell;
use std::sync::atomic::Ordering;

use pgrx::pg_sys;

use crate::shared::{self, Shared};

thread_local! {
    /// The (sub)transaction level at which this backend's current wait started, if it waits.
    static WAIT_LEVEL: Cell<Option<i32>> = const { Cell::new(None) };
    /// Lock keys of resources whose waiters to wake once this transaction's locks are released.
    static TO_WAKE: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This backend's database: queues are per database, like resources.
fn my_database() -> u32 {
    // SAFETY: MyDatabaseId is set once at backend start.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Whether a slot waits for the resource with lock key `key` in database `database`.
fn waits_for(slot: &shared::WaiterSlot, database: u32, key: u64) -> bool {
    slot.active && slot.database == database && slot.key == key
}

/// This backend's slot in the waiter table.
fn my_slot() -> usize {
    // SAFETY: MyProc is set for every backend that can run SQL.
    unsafe { (*pg_sys::MyProc).pgprocno as usize }
}

/// A place in a resource's queue; leaving the queue (drop) wakes the next waiter.
pub struct Ticket {
    shared: &'static Shared,
    key: u64,
    ticket: u64,
}

/// Joins the queue of the resource with lock key `key`. None without shared memory.
pub fn enqueue(key: u64) -> Option<Ticket> {
    let shared = shared::get()?;
    let mut waiters = shared.lock_waiters();
    let ticket = waiters.take_ticket();
    let slot = &mut waiters.slots()[my_slot()];
    // SAFETY: MyLatch is this process's latch, valid for the life of the process.
    *slot = shared::WaiterSlot {
        active: true,
        database: my_database(),
        key,
        ticket,
        latch: unsafe { pg_sys::MyLatch },
    };
    shared.waiting.fetch_add(1, Ordering::AcqRel);
    // SAFETY: reads the current nesting level.
    WAIT_LEVEL.with(|level| level.set(Some(unsafe { pg_sys::GetCurrentTransactionNestLevel() })));
    Some(Ticket { shared, key, ticket })
}

impl Ticket {
    /// Whether this waiter is the head of its queue.
    pub fn is_head(&self) -> bool {
        let mut waiters = self.shared.lock_waiters();
        let database = my_database();
        !waiters.slots().iter().any(|slot| waits_for(slot, database, self.key) && slot.ticket < self.ticket)
    }

    pub fn number(&self) -> u64 {
        self.ticket
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // While unwinding from an error the transaction's abort callback leaves the queue.
        if !std::thread::panicking() {
            leave(self.shared);
        }
    }
}

/// Leaves the queue if the wait started at subtransaction level `level` or deeper: called on
/// abort of the transaction (level 1) or of a subtransaction. The wait's own attempts run in
/// deeper subtransactions, so rolling one back keeps the place in the queue.
pub fn leave_queue_on_abort(level: i32) {
    let waits_there = WAIT_LEVEL.with(|wait_level| wait_level.get().is_some_and(|started| started >= level));
    if let (true, Some(shared)) = (waits_there, shared::get()) {
        leave(shared);
    }
}

fn leave(shared: &Shared) {
    WAIT_LEVEL.with(|level| level.set(None));
    let mut waiters = shared.lock_waiters();
    let slot = &mut waiters.slots()[my_slot()];
    if !slot.active {
        return;
    }
    slot.active = false;
    let (database, key) = (slot.database, slot.key);
    shared.waiting.fetch_sub(1, Ordering::AcqRel);
    wake_head_locked(waiters.slots(), database, key);
}

/// Whether any backend waits for any lease (a hint: the count may change at once).
pub fn anyone_waits() -> bool {
    shared::get().is_some_and(|shared| shared.waiting.load(Ordering::Acquire) > 0)
}

/// Whether a grant of `resource` must be left to a queued waiter:
/// true when someone waits for it and `ticket` (the caller's, if it waits) is not the head.
pub fn must_yield(resource: &str, ticket: Option<u64>) -> bool {
    let Some(shared) = shared::get() else { return false };
    if shared.waiting.load(Ordering::Acquire) == 0 {
        return false;
    }
    let key = crate::barrier::resource_key(resource);
    let database = my_database();
    let mut waiters = shared.lock_waiters();
    waiters
        .slots()
        .iter()
        .any(|slot| waits_for(slot, database, key) && ticket.is_none_or(|mine| slot.ticket < mine))
}

/// How many backends wait for each resource key, as (key, waiters).
pub fn counts() -> Vec<(u64, i32)> {
    let Some(shared) = shared::get() else { return Vec::new() };
    if shared.waiting.load(Ordering::Acquire) == 0 {
        return Vec::new();
    }
    let mut counts: Vec<(u64, i32)> = Vec::new();
    let mut waiters = shared.lock_waiters();
    let database = my_database();
    for slot in waiters.slots().iter().filter(|slot| slot.active && slot.database == database) {
        match counts.iter_mut().find(|(key, _)| *key == slot.key) {
            Some((_, count)) => *count += 1,
            None => counts.push((slot.key, 1)),
        }
    }
    counts
}

/// Wakes the heads of the queues of these resources (by lock key) once the ending
/// transaction's locks are released ([`wake_deferred`]).
pub fn wake_after_locks(keys: impl IntoIterator<Item = u64>) {
    let Some(shared) = shared::get() else { return };
    if shared.waiting.load(Ordering::Acquire) == 0 {
        return;
    }
    TO_WAKE.with(|to_wake| to_wake.borrow_mut().extend(keys));
}

/// Called after a transaction's locks were released: wakes what [`wake_after_locks`] noted.
pub fn wake_deferred() {
    let keys = TO_WAKE.with(|to_wake| std::mem::take(&mut *to_wake.borrow_mut()));
    wake_heads(&keys);
}

/// Wakes the head of the queue for each of these keys (resources that were just freed).
pub fn wake_heads(keys: &[u64]) {
    let Some(shared) = shared::get() else { return };
    if keys.is_empty() || shared.waiting.load(Ordering::Acquire) == 0 {
        return;
    }
    let database = my_database();
    let mut waiters = shared.lock_waiters();
    for key in keys {
        wake_head_locked(waiters.slots(), database, *key);
    }
}

fn wake_head_locked(slots: &[shared::WaiterSlot], database: u32, key: u64) {
    let head = slots.iter().filter(|slot| waits_for(slot, database, key)).min_by_key(|slot| slot.ticket);
    if let Some(head) = head {
        // SAFETY: the latch belongs to a live backend (its slot is active; a backend leaves
        // the table before it exits).
        unsafe { pg_sys::SetLatch(head.latch) };
    }
}

/// The longest single latch sleep: WaitLatch takes at most INT_MAX milliseconds, and a longer
/// wait loops, looking again at its deadline after each sleep.
const MAX_SLEEP_MS: i64 = 3_600_000;

/// Sleeps until the latch is set or `timeout_ms` (at most [`MAX_SLEEP_MS`]) passes; raises the error of a pending
/// cancel, statement timeout or termination.
pub fn sleep(timeout_ms: i64) {
    // SAFETY: the standard latch wait of a backend; interrupts are serviced right after.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout_ms.clamp(0, MAX_SLEEP_MS) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::check_for_interrupts!();
    }
}
