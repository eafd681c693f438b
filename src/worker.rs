//! The launcher and the expiry workers.
//!
//! The *launcher* (`pg_stat_activity.backend_type` = `lease launcher`) is registered when the
//! library is preloaded, starts once the server accepts writes (on a standby: after promotion)
//! and connects to no database. It starts one *expiry worker* (`lease expirer`) per database
//! that has the extension, each in a slot of shared memory ([`crate::shared::DatabaseState`]):
//! - at start, for every database that accepts connections (`lease.database`, if set, names the
//!   only one); a worker whose database lacks the extension exits at once and frees its slot;
//! - later, for a database whose backends commit lease changes while no worker serves it (the
//!   extension was created since);
//! - again, if a worker stopped while its slot is still assigned (terminated, or an error) and
//!   its database still exists.
//!
//! An expiry worker loops:
//! 1. publish the committed events waiting in its database's ring, with NOTIFY, in batches;
//! 2. sweep expired leases ([`crate::expiry::sweep`]) in transactions of at most
//!    `lease.expire_batch` leases, then publish their events;
//! 3. sleep until the earliest expiry, at most `lease.max_naptime`; a backend that adds events
//!    or commits an earlier expiry sets its latch.
//!
//! It exits, freeing its slot, when it finds the extension dropped. SIGHUP reloads the
//! configuration; SIGTERM ends either process.

use std::ffi::CStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::events;
use crate::expiry;
use crate::settings;
use crate::shared::{self, DatabaseState};
use crate::stats::{self, Counter};
use crate::store::clock_now;

/// Events published per NOTIFY transaction.
const PUBLISH_BATCH: usize = 1024;
/// How long the launcher ignores a database that asked for a worker and could not have one.
const REFUSAL_MEMORY_MS: i64 = 10_000;
/// How soon to look again at an expired lease whose resource was busy.
const BUSY_RETRY_MS: i64 = 10;
/// After publishing, events are gathered this long before the next NOTIFY transaction, so that
/// a busy server pays for one transaction per millisecond rather than one per commit.
const PUBLISH_INTERVAL_MS: i64 = 1;
/// How soon to look again at a NOTIFY queue that was too full to publish.
const NOTIFY_QUEUE_RETRY_MS: i64 = 100;
/// The launcher's longest sleep: how soon it notices a stopped worker it was not told of.
const LAUNCHER_NAPTIME_MS: i64 = 500;

/// Registers the launcher; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("lease launcher")
        .set_type("lease launcher")
        .set_library("lease")
        .set_function("lease_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn lease_launcher_main(_argument: pg_sys::Datum) {
    attach_signal_handlers();
    BackgroundWorker::connect_worker_to_spi(None, None);
    let shared = shared::get().expect("the lease launcher runs only when the library is preloaded");
    // SAFETY: MyLatch is this process's latch, in shared memory for as long as it lives.
    shared.launcher_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    let mut launcher = Launcher {
        workers: (0..shared.database_slots().len()).map(|_| None).collect(),
        refused: std::collections::HashMap::new(),
    };
    for (database, _) in servable_databases() {
        launcher.serve(database);
    }
    // At least once a second: a worker that stopped is started again within about a second,
    // also one whose stop this launcher was not told of (started by an earlier launcher).
    let naptime = Duration::from_millis(settings::max_naptime_ms().clamp(1, LAUNCHER_NAPTIME_MS) as u64);
    while BackgroundWorker::wait_latch(Some(naptime)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloading the configuration file is what SIGHUP asks for.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let requested = shared.requested_database.swap(0, Ordering::AcqRel);
        if requested != 0
            && shared.assigned(requested.into()).is_none()
            && !launcher.refused_lately(requested)
        {
            let servable = servable_databases().iter().any(|(database, _)| database.to_u32() == requested);
            if !(servable && launcher.serve(requested.into())) {
                // Asked again at every commit there: look again only after a while.
                launcher.refused.insert(requested, clock_now());
            }
        }
        launcher.restart_stopped_workers();
    }
    shared.launcher_latch.store(std::ptr::null_mut(), Ordering::Release);
    exit_to_be_restarted();
}

/// SIGHUP reloads the configuration (pgrx sets a flag the loops look at); SIGTERM is
/// PostgreSQL's own `die`, as for any backend: the next interrupt check ends the process with a
/// FATAL error, also while it waits for a lock, which pgrx's handler (a flag and the latch)
/// cannot interrupt. A FATAL exit has status 1, so the worker is started again (see
/// [`exit_to_be_restarted`]).
fn attach_signal_handlers() {
    const SIGTERM: std::ffi::c_int = 15;
    // The server's own handler, not pgrx's wrapper of it: a signal handler must be the C
    // function itself.
    unsafe extern "C-unwind" {
        fn die(signal: std::ffi::c_int);
    }
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SAFETY: installs PostgreSQL's standard termination handler before signals are unblocked.
    unsafe { pg_sys::pqsignal(SIGTERM, Some(die)) };
}

/// Ends a worker on SIGTERM with a non-zero status: the postmaster restarts a worker that
/// exited 0 never, and one that failed after its restart time, except while the server shuts
/// down, when it restarts none. So `pg_terminate_backend` of a worker is healed, shutdown is not.
fn exit_to_be_restarted() -> ! {
    // SAFETY: proc_exit runs the exit callbacks and ends the process; nothing is held here.
    unsafe { pg_sys::proc_exit(1) }
}

/// The workers the launcher started, by slot.
struct Launcher {
    workers: Vec<Option<DynamicBackgroundWorker>>,
    /// Databases that asked for a worker and could not have one, and when (server clock).
    refused: std::collections::HashMap<u32, i64>,
}

impl Launcher {
    /// Whether `database` asked in vain within the last [`REFUSAL_MEMORY_MS`].
    fn refused_lately(&self, database: u32) -> bool {
        self.refused.get(&database).is_some_and(|at| clock_now() - at < REFUSAL_MEMORY_MS * 1_000)
    }

    /// Assigns a free slot to `database` and starts its worker; false if no slot is free.
    fn serve(&mut self, database: pg_sys::Oid) -> bool {
        let shared = shared::get().expect("preloaded");
        if shared.assigned(database).is_some() {
            return true;
        }
        let free = shared.database_slots().iter().position(|slot| slot.database.load(Ordering::Acquire) == 0);
        let Some(index) = free else {
            warning!(
                "lease: no expiry worker for database with OID {}: all lease.max_databases ({}) slots are in use",
                database.to_u32(),
                shared.database_slots().len()
            );
            return false;
        };
        let slot = &shared.database_slots()[index];
        slot.reset();
        slot.database.store(database.to_u32(), Ordering::Release);
        self.start(index)
    }

    /// Starts the worker of slot `index`; false, with the slot freed, if the postmaster has no
    /// room for it (its database's events then go straight to NOTIFY, and the launcher tries
    /// again when asked, at most every [`REFUSAL_MEMORY_MS`]).
    fn start(&mut self, index: usize) -> bool {
        // SAFETY: MyProcPid is this process's pid.
        let launcher_pid = unsafe { pg_sys::MyProcPid };
        let worker = BackgroundWorkerBuilder::new("lease expirer")
            .set_type("lease expirer")
            .set_library("lease")
            .set_function("lease_expirer_main")
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            .set_argument(Some(pg_sys::Datum::from(index)))
            .set_notify_pid(launcher_pid)
            .load_dynamic();
        let slot = &shared::get().expect("preloaded").database_slots()[index];
        match worker {
            Ok(worker) => {
                self.workers[index] = Some(worker);
                true
            }
            Err(_) => {
                let database = slot.database.swap(0, Ordering::AcqRel);
                // Events a stopped worker left in the ring are lost with the slot: count them.
                stats::add(Counter::EventsDropped, slot.ring_counters().1);
                self.refused.insert(database, clock_now());
                warning!(
                    "lease: could not start an expiry worker for database with OID {database}; raise max_worker_processes"
                );
                false
            }
        }
    }

    /// Starts again the worker of every assigned slot whose worker stopped, unless its
    /// database is gone (then the slot is freed).
    fn restart_stopped_workers(&mut self) {
        let shared = shared::get().expect("preloaded");
        let mut databases = None;
        for (index, slot) in shared.database_slots().iter().enumerate() {
            // Running while a worker holds the slot (also one an earlier launcher started), or
            // while ours has not stopped (it may not have claimed the slot yet).
            let running = slot.worker_pid.load(Ordering::Acquire) != 0
                || self.workers[index]
                    .as_ref()
                    .is_some_and(|worker| !matches!(worker.pid(), Err(BackgroundWorkerStatus::Stopped)));
            let database = slot.database.load(Ordering::Acquire);
            if running || database == 0 {
                if !running {
                    self.workers[index] = None;
                }
                continue;
            }
            self.workers[index] = None;
            let databases = databases.get_or_insert_with(servable_databases);
            if databases.iter().any(|(oid, _)| oid.to_u32() == database) {
                self.start(index);
            } else {
                slot.database.store(0, Ordering::Release);
            }
        }
    }
}

/// Databases that accept connections and are not templates, with their names; only the one
/// named by `lease.database` when it is set.
fn servable_databases() -> Vec<(pg_sys::Oid, String)> {
    let only = settings::database();
    let mut databases = BackgroundWorker::transaction(|| {
        let mut found = Vec::new();
        // SAFETY: a heap scan of the shared catalog pg_database inside a transaction; each
        // tuple's data is a FormData_pg_database, read before the next tuple is fetched.
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
            let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    break;
                }
                let header = (*tuple).t_data;
                let row = &*header
                    .cast::<u8>()
                    .add((*header).t_hoff as usize)
                    .cast::<pg_sys::FormData_pg_database>();
                if row.datallowconn && !row.datistemplate {
                    let name = CStr::from_ptr(row.datname.data.as_ptr()).to_string_lossy().into_owned();
                    found.push((row.oid, name));
                }
            }
            pg_sys::heap_endscan(scan);
            pg_sys::table_close(relation, lock);
        }
        found
    });
    if let Some(only) = only {
        databases.retain(|(_, name)| *name == only);
    }
    databases
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn lease_expirer_main(argument: pg_sys::Datum) {
    attach_signal_handlers();
    let shared = shared::get().expect("the lease worker runs only when the library is preloaded");
    let index = argument.value();
    let state = &shared.database_slots()[index];
    // SAFETY: MyProcPid is this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    if state.worker_pid.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return; // another worker serves the slot (started by an earlier launcher)
    }
    // SAFETY: registers a callback with this worker's slot index, which gives the slot back on
    // any exit.
    unsafe { pg_sys::before_shmem_exit(Some(leave_slot), argument) };
    let database = pg_sys::Oid::from(state.database.load(Ordering::Acquire));
    if database == pg_sys::InvalidOid {
        return; // freed before we started
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // SAFETY: MyLatch is this process's latch, in shared memory for as long as it lives;
    // leave_slot clears it on any exit.
    state.worker_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    state.worker_started.store(true, Ordering::Release);
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
        state.next_wakeup.store(i64::MAX, Ordering::Release);
        state.publish_requested.store(false, Ordering::Release);
        sweep_at = sweep_at.min(state.earliest_expiry.swap(i64::MAX, Ordering::AcqRel));
        let mut held_back = false;
        let mut published = publish(state, &mut held_back);
        if clock_now() >= sweep_at {
            let Some(next) = sweep_all() else {
                log!("lease expirer for database \"{name}\" exits: the extension is not created there");
                state.database.store(0, Ordering::Release);
                return;
            };
            // Swept at least every max_naptime: that is also how soon a dropped extension is
            // noticed.
            sweep_at = next.min(clock_now() + settings::max_naptime_ms() * 1_000);
        }
        if state.sessions_ended.swap(false, Ordering::AcqRel) || clock_now() >= sessions_retry_at {
            sessions_retry_at = match sweep_ended_sessions() {
                0 => i64::MAX,
                _busy => clock_now() + BUSY_RETRY_MS * 1_000, // look again soon
            };
        }
        published += publish(state, &mut held_back);
        if published > 0 {
            gather_events();
        }
        // Our own waits (locks, the NOTIFY queue, a synchronous standby) may have consumed a
        // latch wake-up: look again at everything a backend may have asked for meanwhile.
        sweep_at = sweep_at.min(state.earliest_expiry.swap(i64::MAX, Ordering::AcqRel));
        let now = clock_now();
        let more_to_do =
            state.publish_requested.load(Ordering::Acquire) || state.sessions_ended.load(Ordering::Acquire);
        let mut wake_at = if more_to_do { now } else { sweep_at.min(sessions_retry_at) };
        if held_back {
            // Look at the NOTIFY queue again soon, but not at every commit: with the flag set,
            // committing backends do not set our latch.
            state.publish_requested.store(true, Ordering::Release);
            wake_at = sweep_at.min(sessions_retry_at).min(now + NOTIFY_QUEUE_RETRY_MS * 1_000);
        }
        state.next_wakeup.store(wake_at, Ordering::Release);
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
    if let Some(state) = shared::get().and_then(|shared| shared.database_slots().get(argument.value())) {
        // SAFETY: MyLatch and MyProcPid are this process's.
        let (latch, pid) = unsafe { (pg_sys::MyLatch, pg_sys::MyProcPid) };
        let _ = state.worker_latch.compare_exchange(
            latch,
            std::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let _ = state.worker_pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Sweeps until no expired lease is left (or only busy ones); returns when to sweep next, or
/// None if the extension does not exist in this database.
fn sweep_all() -> Option<i64> {
    loop {
        let batch = settings::expire_batch();
        let (sweep, next_expiry) = BackgroundWorker::transaction(|| {
            // SAFETY: a catalog lookup inside a transaction.
            let installed =
                unsafe { pg_sys::get_extension_oid(c"lease".as_ptr(), true) } != pg_sys::InvalidOid;
            installed.then(|| (expiry::sweep(batch), expiry::next_expiry()))
        })?;
        if sweep.found == batch && sweep.removed > 0 {
            continue; // more may be waiting: next batch, in its own transaction
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
fn publish(state: &DatabaseState, held_back: &mut bool) -> usize {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut sent = 0;
    loop {
        if BackgroundWorker::transaction(settings::notify_queue_too_full) {
            *held_back = true;
            return sent;
        }
        batch.clear();
        // Cleared before each take: an event pushed after it sets the flag (and the latch) again.
        state.publish_requested.store(false, Ordering::Release);
        // Pairs with the fence of a committing backend (events::push_to_ring).
        std::sync::atomic::fence(Ordering::SeqCst);
        state.take(PUBLISH_BATCH, &mut batch);
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
        state.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}
