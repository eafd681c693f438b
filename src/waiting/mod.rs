//! Waiting for a lease, first come first served.
//!
//! A call with `wait` > 0 takes a ticket and a slot in the shared waiter table ([`table`]).
//! Only the head of a resource's queue (its waiter with the smallest ticket) tries to acquire;
//! a `lease_acquire_all` waits in the queue of every resource it names with one ticket, and
//! tries only when it is the head of all of them (tickets are one sequence, so two such
//! waiters are in the same order in every queue they share, and none waits for another in a
//! circle);
//! the others sleep on their latch. The head tries in a subtransaction that is rolled back when
//! the lease is still held, so that while it sleeps it holds no lock on the lease table and no
//! barrier lock. It sleeps until the lease's expiry or its own deadline, whichever is first,
//! unless woken earlier: a commit that frees the resource (release, expiry, revocation, session
//! end) sets the head's latch, and a head that leaves the queue (granted, timed out, cancelled,
//! or its session ended) wakes the next one.
//!
//! The rule for calls that do not wait: a grant goes to the queue's head while anyone is
//! queued, so an acquire without `wait` returns NULL for a free or expired lease that others
//! are waiting for. (Re-acquiring a lease one already holds is not a grant and is unaffected.)
//!
//! Uses vocabulary, shmem and barrier.

use std::cell::{Cell, RefCell};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::barrier::resource_key;
use crate::vocabulary::{my_database, nesting_level};

pub mod table;

use table::{table, WaiterSlot, WaiterTable};

thread_local! {
    /// The (sub)transaction level at which this backend's current wait started, if it waits.
    static WAIT_LEVEL: Cell<Option<i32>> = const { Cell::new(None) };
    /// Lock keys of resources whose waiters to wake once this transaction's locks are released.
    static TO_WAKE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// This backend's slot in the waiter table.
fn my_slot() -> usize {
    // SAFETY: MyProc is set for every backend that can run SQL.
    unsafe { (*pg_sys::MyProc).pgprocno as usize }
}

pub use table::MAX_KEYS;

/// A place in the queues of one or more resources; leaving them (drop) wakes the next waiters.
pub struct Ticket {
    table: &'static WaiterTable,
    keys: Vec<u64>,
    number: u64,
    shared: bool,
}

/// Joins the queues of `resources` (at most [`MAX_KEYS`]) with one ticket, for a shared lease
/// or not. None without shared memory.
pub fn enqueue(resources: &[&str], shared: bool) -> Option<Ticket> {
    let table = table()?;
    let keys: Vec<u64> = resources.iter().map(|resource| resource_key(resource)).collect();
    assert!(!keys.is_empty() && keys.len() <= MAX_KEYS, "a wait names 1 to {MAX_KEYS} resources");
    let mut slot_keys = [0; MAX_KEYS];
    slot_keys[..keys.len()].copy_from_slice(&keys);
    let mut locked = table.lock();
    let number = locked.take_ticket();
    // SAFETY: MyLatch is this process's latch, valid for the life of the process.
    let latch = unsafe { pg_sys::MyLatch };
    locked.slots()[my_slot()] = WaiterSlot {
        active: true,
        database: my_database().to_u32(),
        key_count: keys.len() as u16,
        shared,
        keys: slot_keys,
        ticket: number,
        latch,
    };
    locked.count_waiting(1);
    drop(locked);
    WAIT_LEVEL.with(|level| level.set(Some(nesting_level())));
    Some(Ticket { table, keys, number, shared })
}

impl Ticket {
    /// Whether this waiter is at the head of every queue it is in: no waiter came before it,
    /// or for a shared lease, only other shared waiters did, or only waiters for a lease this
    /// waiter holds now (lock keys `held`: they wait for it, and the two would otherwise wait for
    /// each other in a circle).
    pub fn is_head(&self, held: &[u64]) -> bool {
        let database = my_database().to_u32();
        let mut locked = self.table.lock();
        !locked.slots().iter().any(|slot| {
            slot.ticket < self.number
                && !(self.shared && slot.shared)
                && !waits_for_any(slot, database, held)
                && self.keys.iter().any(|&key| slot.waits_for(database, key))
        })
    }

    /// What [`must_yield`] needs of this ticket, with the lock keys of the leases the waiter
    /// holds now.
    pub fn place<'a>(&self, held: &'a [u64]) -> Place<'a> {
        Place { number: self.number, held }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // While unwinding from an error the transaction's abort callback leaves the queue.
        if !std::thread::panicking() {
            leave(self.table);
        }
    }
}

/// Leaves the queue if the wait started at subtransaction level `level` or deeper: called on
/// abort of the transaction (level 1) or of a subtransaction. The wait's own attempts run in
/// deeper subtransactions, so rolling one back keeps the place in the queue.
pub fn leave_queue_on_abort(level: i32) {
    let waits_there = WAIT_LEVEL.with(|wait_level| wait_level.get().is_some_and(|started| started >= level));
    if let (true, Some(table)) = (waits_there, table()) {
        leave(table);
    }
}

fn leave(table: &WaiterTable) {
    WAIT_LEVEL.with(|level| level.set(None));
    let mut locked = table.lock();
    let slot = &mut locked.slots()[my_slot()];
    if !slot.active {
        return;
    }
    slot.active = false;
    let left = *slot;
    locked.count_waiting(-1);
    for &key in left.keys() {
        locked.wake_head(left.database, key);
    }
}

/// Whether any backend waits for any lease (a hint: the count may change at once).
pub fn anyone_waits() -> bool {
    table().is_some_and(WaiterTable::anyone_waits)
}

/// A waiter's place: its ticket's number, and the lock keys of the leases it holds already.
#[derive(Clone, Copy)]
pub struct Place<'a> {
    pub number: u64,
    pub held: &'a [u64],
}

/// Whether `slot` waits for any of the resources with lock keys `keys`.
fn waits_for_any(slot: &WaiterSlot, database: u32, keys: &[u64]) -> bool {
    keys.iter().any(|&key| slot.waits_for(database, key))
}

/// Whether a grant of `resource` must be left to a queued waiter: true when someone waits for
/// it ahead of `place` (the caller's, if it waits; a call that does not wait comes after every
/// waiter). A grant of a shared lease (`shared`) gives way only to waiters for an exclusive
/// lease or a permit: shared waiters are served together. A waiter never gives way to one that
/// waits for a lease it holds (that one waits for it).
pub fn must_yield(resource: &str, place: Option<Place>, shared: bool) -> bool {
    let Some(table) = table().filter(|table| table.anyone_waits()) else { return false };
    let (database, key) = (my_database().to_u32(), resource_key(resource));
    let mut locked = table.lock();
    locked.slots().iter().any(|slot| {
        slot.waits_for(database, key)
            && place.is_none_or(|mine| slot.ticket < mine.number && !waits_for_any(slot, database, mine.held))
            && !(shared && slot.shared)
    })
}

/// Wakes the heads of the queues of these resources (by lock key) once the ending
/// transaction's locks are released ([`wake_deferred`]).
pub fn wake_after_locks(keys: impl IntoIterator<Item = u64>) {
    if anyone_waits() {
        TO_WAKE.with(|to_wake| to_wake.borrow_mut().extend(keys));
    }
}

/// Called after a transaction's locks were released: wakes what [`wake_after_locks`] noted.
pub fn wake_deferred() {
    let keys = TO_WAKE.with(|to_wake| std::mem::take(&mut *to_wake.borrow_mut()));
    let Some(table) = table().filter(|table| !keys.is_empty() && table.anyone_waits()) else { return };
    let database = my_database().to_u32();
    let mut locked = table.lock();
    for key in keys {
        locked.wake_head(database, key);
    }
}

/// The longest single latch sleep: WaitLatch takes at most INT_MAX milliseconds, and a longer
/// wait loops, looking again at its deadline after each sleep.
const MAX_SLEEP_MS: i64 = 3_600_000;

/// Sleeps until the latch is set or `timeout_ms` (at most [`MAX_SLEEP_MS`]) passes; raises the
/// error of a pending cancel, statement timeout or termination.
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

/// `lease._waiter_counts()`: how many calls wait for each resource of this database, by lock
/// key; `lease.active` joins it on `lease._resource_key(resource)`.
#[pg_extern(sql = false)]
fn waiter_counts() -> TableIterator<'static, (name!(resource_key, i64), name!(waiters, i32))> {
    let mut counts: Vec<(i64, i32)> = Vec::new();
    if let Some(table) = table().filter(|table| table.anyone_waits()) {
        let database = my_database().to_u32();
        let mut locked = table.lock();
        for slot in locked.slots().iter().filter(|slot| slot.active && slot.database == database) {
            for &key in slot.keys() {
                match counts.iter_mut().find(|(counted, _)| *counted == key as i64) {
                    Some((_, count)) => *count += 1,
                    None => counts.push((key as i64, 1)),
                }
            }
        }
    }
    TableIterator::new(counts)
}

/// Whether calls can wait here (the waiter table exists: the library was preloaded).
/// Calls `attempt` until it gives something, at most `tries` more times a millisecond apart
/// (a lock another transaction holds for a moment): None if it never did.
pub fn try_briefly<T>(tries: usize, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let mut outcome = attempt();
    for _ in 0..tries {
        if outcome.is_some() {
            break;
        }
        sleep(1);
        outcome = attempt();
    }
    outcome
}

pub fn can_wait() -> bool {
    table().is_some()
}
