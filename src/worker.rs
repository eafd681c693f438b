//! The expiry worker (`pg_stat_activity.backend_type` = `lease expirer`).
//!
//! One background worker, started when the library is preloaded, serving `lease.database`. It
//! starts once the server accepts writes (on a standby: after promotion), and loops:
//! 1. publish the committed events waiting in the shared ring, with NOTIFY, in batches;
//! 2. if the extension exists in its database, sweep expired leases ([`crate::expiry::sweep`])
//!    in transactions of at most `lease.expire_batch` leases, then publish their events;
//! 3. sleep until the earliest expiry, at most `lease.max_naptime`; a backend that adds events
//!    or commits an earlier expiry sets its latch.
//!
//! SIGHUP reloads the configuration; SIGTERM (shutdown, `pg_terminate_backend`) ends the loop,
//! and the worker exits with status 1 so that the postmaster starts it again after a second
//! unless the server is shutting down; so does any error.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::events;
use crate::expiry;
use crate::settings;
use crate::shared::{self, Shared};
use crate::store::clock_now;

/// Events published per NOTIFY transaction.
const PUBLISH_BATCH: usize = 1024;
/// Events copied out of the ring per hold of its lock.
const TAKE_CHUNK: usize = 32;
/// How soon to look again at an expired lease whose resource was busy.
const BUSY_RETRY_MS: i64 = 10;
/// After publishing, events are gathered this long before the next NOTIFY transaction, so that
/// a busy server pays for one transaction per millisecond rather than one per commit.
const PUBLISH_INTERVAL_MS: i64 = 1;

/// Registers the worker; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("lease expirer")
        .set_type("lease expirer")
        .set_library("lease")
        .set_function("lease_expirer_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn lease_expirer_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&settings::database()), None);
    let shared = shared::get().expect("the lease worker runs only when the library is preloaded");
    // SAFETY: MyProc and MyDatabaseId are set once the worker is connected; the process latch
    // lives in shared memory for as long as this process does.
    unsafe {
        shared.worker_latch.store(&raw mut (*pg_sys::MyProc).procLatch, Ordering::Release);
        shared.worker_database.store(pg_sys::MyDatabaseId.to_u32(), Ordering::Release);
    }
    log!("lease expirer started for database \"{}\"", settings::database());
    // Sessions may have ended while no worker ran (a crash restarts every backend).
    shared.sessions_ended.store(true, Ordering::Release);

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
        shared.next_wakeup.store(i64::MAX, Ordering::Release);
        shared.publish_requested.store(false, Ordering::Release);
        sweep_at = sweep_at.min(shared.earliest_expiry.swap(i64::MAX, Ordering::AcqRel));
        let mut published = publish(shared);
        if clock_now() >= sweep_at {
            sweep_at = sweep_all();
        }
        if shared.sessions_ended.swap(false, Ordering::AcqRel) || clock_now() >= sessions_retry_at {
            sessions_retry_at = match sweep_ended_sessions() {
                0 => i64::MAX,
                _busy => clock_now() + BUSY_RETRY_MS * 1_000, // look again soon
            };
        }
        published += publish(shared);
        if published > 0 {
            gather_events();
        }
        // Our own waits (locks, the NOTIFY queue, a synchronous standby) may have consumed a
        // latch wake-up: look again at everything a backend may have asked for meanwhile.
        sweep_at = sweep_at.min(shared.earliest_expiry.swap(i64::MAX, Ordering::AcqRel));
        let now = clock_now();
        let more_to_do =
            shared.publish_requested.load(Ordering::Acquire) || shared.sessions_ended.load(Ordering::Acquire);
        let wake_at = if more_to_do {
            now
        } else {
            sweep_at.min(sessions_retry_at).min(now + settings::max_naptime_ms() * 1_000)
        };
        shared.next_wakeup.store(wake_at, Ordering::Release);
        // Round up to whole milliseconds so that we never wake just before an expiry.
        let sleep_ms = ((wake_at - now + 999) / 1_000).max(0) as u64;
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(sleep_ms))) {
            break;
        }
    }

    shared.worker_latch.store(std::ptr::null_mut(), Ordering::Release);
    shared.worker_database.store(0, Ordering::Release);
    // SAFETY: ends this process; status 1 asks the postmaster to start the worker again.
    unsafe { pg_sys::proc_exit(1) };
}

/// Sweeps until no expired lease is left (or only busy ones); returns when to sweep next.
fn sweep_all() -> i64 {
    loop {
        let batch = settings::expire_batch();
        let (sweep, next_expiry) = BackgroundWorker::transaction(|| {
            // SAFETY: a catalog lookup inside a transaction.
            let installed =
                unsafe { pg_sys::get_extension_oid(c"lease".as_ptr(), true) } != pg_sys::InvalidOid;
            if !installed {
                return (expiry::Sweep::default(), None);
            }
            (expiry::sweep(batch), expiry::next_expiry())
        });
        if sweep.found == batch && sweep.removed > 0 {
            continue; // more may be waiting: next batch, in its own transaction
        }
        if sweep.busy > 0 {
            return clock_now() + BUSY_RETRY_MS * 1_000;
        }
        return next_expiry.unwrap_or(i64::MAX);
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

/// Sends the events waiting in the ring with NOTIFY, in transactions of up to
/// [`PUBLISH_BATCH`] events, in sequence order; returns how many it sent.
fn publish(shared: &Shared) -> usize {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut sent = 0;
    loop {
        batch.clear();
        // Cleared before each take: an event pushed after it sets the flag (and the latch) again.
        shared.publish_requested.store(false, Ordering::Release);
        // Copy in small chunks so that committing backends never wait long for the ring.
        while batch.len() < PUBLISH_BATCH {
            let before = batch.len();
            shared.lock_ring().take(TAKE_CHUNK, &mut batch);
            if batch.len() - before < TAKE_CHUNK {
                break;
            }
        }
        if batch.is_empty() {
            return sent;
        }
        sent += batch.len();
        let channel_ok = events::notify_channel_is_valid();
        BackgroundWorker::transaction(|| {
            for slot in &batch {
                let (seq, event) = events::from_slot(slot);
                if channel_ok {
                    events::notify_now(&events::payload(&event, Some(seq)));
                }
            }
        });
        shared.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}
