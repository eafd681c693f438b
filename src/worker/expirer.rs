//! An expiry worker: publishes its database's events and sweeps its expired leases (see the
//! parent module).
//!
//! Uses events (its slot, the ring, NOTIFY), expiry, settings and vocabulary.

use std::ffi::CStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{attach_signal_handlers, exit_to_be_restarted};
use crate::events::database::{databases, DatabaseSlot};
use crate::events::ring::RING_CAPACITY;
use crate::events::{self, payload};
use crate::expiry;
use crate::settings;
use crate::vocabulary::clock_now;

/// Events published per NOTIFY transaction.
const PUBLISH_BATCH: usize = 1024;
/// How soon to look again at an expired lease whose resource was busy.
const BUSY_RETRY_MS: i64 = 10;
/// After publishing, events are gathered this long before the next NOTIFY transaction, so that
/// a busy server pays for one transaction per millisecond rather than one per commit.
const PUBLISH_INTERVAL_MS: i64 = 1;
/// How soon to look again at a NOTIFY queue that was too full to publish.
const NOTIFY_QUEUE_RETRY_MS: i64 = 100;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn lease_expirer_main(argument: pg_sys::Datum) {
    attach_signal_handlers();
    let databases = databases().expect("the lease worker runs only when the library is preloaded");
    let index = argument.value();
    let slot = &databases.slots()[index];
    // SAFETY: MyProcPid is this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    if slot.worker_pid.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return; // another worker serves the slot (started by an earlier launcher)
    }
    // SAFETY: registers a callback with this worker's slot index, which gives the slot back on
    // any exit.
    unsafe { pg_sys::before_shmem_exit(Some(leave_slot), argument) };
    let database = pg_sys::Oid::from(slot.database.load(Ordering::Acquire));
    if database == pg_sys::InvalidOid {
        return; // freed before we started
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // SAFETY: MyLatch is this process's latch, in shared memory for as long as it lives;
    // leave_slot clears it on any exit.
    slot.worker_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    slot.worker_started.store(true, Ordering::Release);
    let name = BackgroundWorker::transaction(|| {
        // SAFETY: a catalog lookup inside a transaction; the result is copied at once.
        unsafe { CStr::from_ptr(pg_sys::get_database_name(database)).to_string_lossy().into_owned() }
    });
    log!("lease expirer started for database \"{name}\"");

    // When the next sweep is due (server clock): at once, then the earliest expiry known.
    let mut sweep_at = i64::MIN;
    // When to look again at sessions whose leases were busy (i64::MAX: no such leases).
    let mut sessions_retry_at = i64::MAX;
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloading the configuration file is what SIGHUP asks for.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // Awake: every commit from now on sets the latch, so nothing is missed while we work.
        slot.next_wakeup.store(i64::MAX, Ordering::Release);
        slot.publish_requested.store(false, Ordering::Release);
        sweep_at = sweep_at.min(slot.earliest_expiry.swap(i64::MAX, Ordering::AcqRel));
        let mut held_back = false;
        let mut published = publish(slot, &mut held_back);
        if clock_now() >= sweep_at {
            let Some(next) = sweep_all(slot) else {
                log!("lease expirer for database \"{name}\" exits: the extension is not created there");
                slot.database.store(0, Ordering::Release);
                return;
            };
            // Swept at least every max_naptime: that is also how soon a dropped extension is
            // noticed.
            sweep_at = next.min(clock_now() + settings::max_naptime_ms() * 1_000);
        }
        if slot.sessions_ended.swap(false, Ordering::AcqRel) || clock_now() >= sessions_retry_at {
            sessions_retry_at = match sweep_ended_sessions() {
                0 => i64::MAX,
                _busy => clock_now() + BUSY_RETRY_MS * 1_000, // look again soon
            };
        }
        published += publish(slot, &mut held_back);
        if published > 0 {
            gather_events();
        }
        // Our own waits (locks, the NOTIFY queue, a synchronous standby) may have consumed a
        // latch wake-up: look again at everything a backend may have asked for meanwhile.
        sweep_at = sweep_at.min(slot.earliest_expiry.swap(i64::MAX, Ordering::AcqRel));
        let now = clock_now();
        let more_to_do =
            slot.publish_requested.load(Ordering::Acquire) || slot.sessions_ended.load(Ordering::Acquire);
        let mut wake_at = if more_to_do { now } else { sweep_at.min(sessions_retry_at) };
        if held_back {
            // Look at the NOTIFY queue again soon, but not at every commit: with the flag set,
            // committing backends do not set our latch.
            slot.publish_requested.store(true, Ordering::Release);
            wake_at = sweep_at.min(sessions_retry_at).min(now + NOTIFY_QUEUE_RETRY_MS * 1_000);
        }
        slot.next_wakeup.store(wake_at, Ordering::Release);
        // Round up to whole milliseconds so that we never wake just before an expiry.
        let sleep_ms = ((wake_at - now + 999) / 1_000).max(0) as u64;
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(sleep_ms))) {
            // SIGTERM: the slot stays assigned, so the launcher starts us again.
            exit_to_be_restarted();
        }
    }
}

/// Gives the slot back when the worker exits in any way: its latch and its claim, if they are
/// still this worker's (the slot may have been reassigned to a new worker meanwhile).
#[pg_guard]
unsafe extern "C-unwind" fn leave_slot(_code: i32, argument: pg_sys::Datum) {
    if let Some(slot) = databases().and_then(|databases| databases.slots().get(argument.value())) {
        // SAFETY: MyLatch and MyProcPid are this process's.
        let (latch, pid) = unsafe { (pg_sys::MyLatch, pg_sys::MyProcPid) };
        let _ = slot.worker_latch.compare_exchange(
            latch,
            std::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let _ = slot.worker_pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Sweeps until no expired lease is left (or only busy ones); returns when to sweep next, or
/// None if the extension does not exist in this database.
fn sweep_all(slot: &DatabaseSlot) -> Option<i64> {
    loop {
        let batch = settings::expire_batch();
        let (sweep, next_expiry) = BackgroundWorker::transaction(|| {
            // SAFETY: a catalog lookup inside a transaction.
            let installed =
                unsafe { pg_sys::get_extension_oid(c"lease".as_ptr(), true) } != pg_sys::InvalidOid;
            installed.then(|| (expiry::sweep(batch), expiry::next_expiry()))
        })?;
        if sweep.found == batch && sweep.removed > 0 {
            // More may be waiting: next batch, in its own transaction; but first publish, once
            // the ring is half full, so that a mass expiry (a lifeline with thousands of leases)
            // does not overflow it.
            if slot.ring.counters().pending as usize > RING_CAPACITY / 2 {
                let mut held_back = false;
                publish(slot, &mut held_back);
                if held_back {
                    // The NOTIFY queue is too full to take them: the rest waits (expired leases
                    // are free to the next acquire meanwhile) rather than overflow the ring.
                    return Some(clock_now() + NOTIFY_QUEUE_RETRY_MS * 1_000);
                }
            }
            continue;
        }
        if sweep.busy > 0 {
            return Some(clock_now() + BUSY_RETRY_MS * 1_000);
        }
        return Some(next_expiry.unwrap_or(i64::MAX));
    }
}

/// Expires the leases of sessions that ended; returns how many were busy (left for later).
fn sweep_ended_sessions() -> i64 {
    BackgroundWorker::transaction(|| {
        // SAFETY: a catalog lookup inside a transaction.
        let installed = unsafe { pg_sys::get_extension_oid(c"lease".as_ptr(), true) } != pg_sys::InvalidOid;
        if installed {
            expiry::sweep_ended_sessions().busy
        } else {
            0
        }
    })
}

/// Waits [`PUBLISH_INTERVAL_MS`] whatever the latch says (but not past postmaster death).
fn gather_events() {
    // SAFETY: a plain timed wait on the process latch's wait machinery, without WL_LATCH_SET.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            PUBLISH_INTERVAL_MS as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
    }
}

/// Sends the events waiting in the database's ring with NOTIFY, in transactions of up to
/// [`PUBLISH_BATCH`] events, in sequence order; returns how many it sent. While the NOTIFY
/// queue is fuller than `lease.notify_queue_limit` it sends nothing and says so (`held_back`):
/// the events stay in the ring, whose overflow is dropped and counted, and a commit of ours never
/// fails on a full queue and loses a batch.
fn publish(slot: &DatabaseSlot, held_back: &mut bool) -> usize {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut sent = 0;
    loop {
        if BackgroundWorker::transaction(settings::notify_queue_too_full) {
            *held_back = true;
            return sent;
        }
        batch.clear();
        // Cleared before each take: an event pushed after it sets the flag (and the latch) again.
        slot.publish_requested.store(false, Ordering::Release);
        // Pairs with the fence of a committing backend (at commit, `events::at_commit`).
        std::sync::atomic::fence(Ordering::SeqCst);
        slot.ring.take(PUBLISH_BATCH, &mut batch);
        if batch.is_empty() {
            return sent;
        }
        sent += batch.len();
        let channel_ok = events::notify_channel_is_valid();
        BackgroundWorker::transaction(|| {
            for stored in &batch {
                match stored.event() {
                    Some((seq, event)) if channel_ok => events::notify_now(&payload(&event, Some(seq))),
                    Some(_) => {}
                    None => warning!("lease: an event this version cannot read was not sent"),
                }
            }
        });
        slot.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}
