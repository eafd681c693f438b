//! What one database's expiry worker and that database's backends share, in shared memory:
//! one [`DatabaseSlot`] per database a worker serves (at most `lease.max_databases`), each with
//! the database's event ring, and what backends tell the launcher.
//!
//! - The launcher assigns a free slot to a database (`database`) before it starts that
//!   database's worker; the worker frees it (stores 0) when the extension is gone.
//! - `next_wakeup` is when the worker plans to wake next; a backend that commits an earlier
//!   expiry sets the worker's latch. While the worker is awake it is `i64::MAX`, so no change
//!   made during a sweep can be missed.
//! - `sessions_ended` tells the worker that a backend holding session-bound leases exited.
//! - `requested_database` is a database whose backends committed lease changes while no
//!   worker served it: the launcher starts one.
//!
//! Locking: none; every field is an atomic. `database`, the latches, `worker_pid` and
//! `worker_started` are stored with release and loaded with acquire, so a reader that sees a
//! slot assigned or a worker started sees what was set before. `publish_requested` pairs with
//! a sequentially consistent fence on each side (a committing backend after pushing, the worker
//! after clearing the flag): either the worker sees the new events or the backend sees the flag
//! cleared and sets the latch. `worker_pid` is claimed with a compare-and-swap, so at most one
//! worker drains a ring.
//!
//! Uses settings, shmem and the ring.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::ring::EventRing;
use crate::settings;
use crate::shmem::{self, set_latch, Attached};
use crate::vocabulary::my_database;

#[repr(C)]
pub struct DatabaseSlot {
    /// The database served (0: the slot is free).
    pub database: AtomicU32,
    /// The worker's latch, or null while its worker does not run.
    pub worker_latch: AtomicPtr<pg_sys::Latch>,
    /// Set once a worker has run for this assignment; events go to the ring only then.
    pub worker_started: AtomicBool,
    /// The pid of the worker that owns the slot (0: none). A worker claims it first thing and
    /// gives it back when it exits in any way.
    pub worker_pid: AtomicI32,
    /// When the worker will wake next (server clock); `i64::MAX` while it is awake.
    pub next_wakeup: AtomicI64,
    /// Set by backends that added events since the worker last drained the ring.
    pub publish_requested: AtomicBool,
    /// Events published since the slot was assigned.
    pub published: AtomicU64,
    /// The earliest expiry committed since the worker last looked (`i64::MAX`: none).
    pub earliest_expiry: AtomicI64,
    /// Set when a backend that held session-bound leases exits; the worker clears it.
    pub sessions_ended: AtomicBool,
    /// The database's committed events, waiting to be published.
    pub ring: EventRing,
}

/// Every database slot, and the launcher's side.
#[repr(C)]
pub struct Databases {
    /// The launcher's latch, or null while it does not run.
    pub launcher_latch: AtomicPtr<pg_sys::Latch>,
    /// A database that needs a worker (0: none asked).
    pub requested_database: AtomicU32,
    /// The slots, which follow the header (a pointer taken from the segment's own, so valid in
    /// every process: they all map the segment at one address).
    slots: *mut DatabaseSlot,
    count: usize,
}

static DATABASES: Attached<Databases> = Attached::new();

/// The database slots' part of shared memory.
pub const SHMEM: shmem::Part = shmem::Part {
    name: c"lease databases",
    bytes: || shmem::with_trailing::<Databases, DatabaseSlot>(settings::max_databases()),
    locks: 0,
    init: |memory, _| {
        // SAFETY: the part's memory, laid out by `bytes`; the header is written whole and each
        // slot's fields are set, while the rings' event slots (most of the size) stay untouched
        // until used (each is written before it is read).
        unsafe {
            let databases = memory.cast::<Databases>();
            std::ptr::write_bytes(databases, 0, 1);
            (*databases).slots = shmem::trailing::<Databases, DatabaseSlot>(databases);
            (*databases).count = settings::max_databases();
            for slot in (*databases).slots() {
                slot.prepare();
            }
        }
    },
    attach: |memory| DATABASES.set(memory),
};

/// The database slots, if the library was preloaded.
pub fn databases() -> Option<&'static Databases> {
    DATABASES.get()
}

// SAFETY: every field of a slot is atomic (see the module's header), the ring is Sync on its
// own; `slots` and `count` are written once, at initialisation.
unsafe impl Sync for Databases {}

impl Databases {
    /// Every database slot, free or not.
    pub fn slots(&self) -> &[DatabaseSlot] {
        // SAFETY: `count` slots at `slots`, laid out at initialisation; they live as long as the
        // server.
        unsafe { std::slice::from_raw_parts(self.slots, self.count) }
    }

    /// The slot assigned to `database`, if one is, whether or not its worker runs.
    pub fn assigned(&self, database: pg_sys::Oid) -> Option<&DatabaseSlot> {
        let database = database.to_u32();
        self.slots().iter().find(|slot| slot.database.load(Ordering::Acquire) == database)
    }

    /// The slot assigned to this backend's database, if one is.
    pub fn assigned_to_my_database(&self) -> Option<&DatabaseSlot> {
        self.assigned(my_database())
    }

    /// The slot of this backend's database if its worker has started: only then do committed
    /// events go to the ring. A worker that stops later (terminated, restarting) publishes what
    /// is left in the ring when it is back; one that never started would publish nothing.
    pub fn serving_my_database(&self) -> Option<&DatabaseSlot> {
        self.assigned_to_my_database().filter(|slot| slot.worker_started.load(Ordering::Acquire))
    }

    /// Asks the launcher to start a worker for this backend's database.
    pub fn request_worker(&self) {
        let database = my_database().to_u32();
        if self.requested_database.swap(database, Ordering::AcqRel) != database {
            set_latch(self.launcher_latch.load(Ordering::Acquire));
        }
    }
}

impl DatabaseSlot {
    /// The state of a slot nobody has used: free, no worker.
    fn prepare(&self) {
        self.database.store(0, Ordering::Relaxed);
        self.worker_pid.store(0, Ordering::Relaxed);
        self.reset();
        self.sessions_ended.store(false, Ordering::Relaxed);
    }

    /// Empties the slot's state for a new assignment (the launcher calls it with the slot free).
    pub fn reset(&self) {
        self.ring.reset();
        self.worker_latch.store(std::ptr::null_mut(), Ordering::Release);
        self.worker_started.store(false, Ordering::Release);
        self.next_wakeup.store(i64::MAX, Ordering::Release);
        self.publish_requested.store(false, Ordering::Release);
        self.published.store(0, Ordering::Release);
        self.earliest_expiry.store(i64::MAX, Ordering::Release);
        // Sessions may have ended while no worker ran (a crash restarts every backend).
        self.sessions_ended.store(true, Ordering::Release);
    }

    /// Wakes the worker, if it is running.
    pub fn wake_worker(&self) {
        set_latch(self.worker_latch.load(Ordering::Acquire));
    }
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
    let slot = databases().and_then(Databases::assigned_to_my_database);
    let counters = slot.map_or((0, 0, 0, 0), |slot| {
        let ring = slot.ring.counters();
        (ring.last_seq, ring.pending, slot.published.load(Ordering::Relaxed), ring.dropped)
    });
    TableIterator::once((counters.0 as i64, counters.1 as i64, counters.2 as i64, counters.3 as i64))
}
