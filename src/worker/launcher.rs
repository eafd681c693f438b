//! The launcher: starts an expiry worker per database that has the extension, and starts a
//! stopped one again (see the parent module).
//!
//! Uses events (the database slots), settings, stats and vocabulary.

use std::ffi::CStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{attach_signal_handlers, exit_to_be_restarted};
use crate::events::database::databases;
use crate::settings;
use crate::stats::{self, Counter};
use crate::vocabulary::clock_now;

/// How long the launcher ignores a database that asked for a worker and could not have one.
const REFUSAL_MEMORY_MS: i64 = 10_000;
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
    let databases = databases().expect("the lease launcher runs only when the library is preloaded");
    // SAFETY: MyLatch is this process's latch, in shared memory for as long as it lives.
    databases.launcher_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    let mut launcher = Launcher {
        workers: (0..databases.slots().len()).map(|_| None).collect(),
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
        let requested = databases.requested_database.swap(0, Ordering::AcqRel);
        if requested != 0
            && databases.assigned(requested.into()).is_none()
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
    databases.launcher_latch.store(std::ptr::null_mut(), Ordering::Release);
    exit_to_be_restarted();
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
        let databases = databases().expect("preloaded");
        if databases.assigned(database).is_some() {
            return true;
        }
        let free = databases.slots().iter().position(|slot| slot.database.load(Ordering::Acquire) == 0);
        let Some(index) = free else {
            warning!(
                "lease: no expiry worker for database with OID {}: all lease.max_databases ({}) slots are in use",
                database.to_u32(),
                databases.slots().len()
            );
            return false;
        };
        let slot = &databases.slots()[index];
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
        let slot = &databases().expect("preloaded").slots()[index];
        match worker {
            Ok(worker) => {
                self.workers[index] = Some(worker);
                true
            }
            Err(_) => {
                let database = slot.database.swap(0, Ordering::AcqRel);
                // Events a stopped worker left in the ring are lost with the slot: count them.
                stats::add(Counter::EventsDropped, slot.ring.counters().pending);
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
        let mut servable = None;
        for (index, slot) in databases().expect("preloaded").slots().iter().enumerate() {
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
            let servable = servable.get_or_insert_with(servable_databases);
            if servable.iter().any(|(oid, _)| oid.to_u32() == database) {
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
