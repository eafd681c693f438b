//! `lease`: fenced, time-limited leases for PostgreSQL.
//!
//! A lease is the exclusive, time-limited right of one holder to one resource, kept as a row of
//! `lease.leases` and guarded by a transaction-scoped advisory lock per resource. Modules:
//! - [`api`]: the SQL-callable functions and their argument checks;
//! - [`fence`]: the `lease_fence` trigger that fences row changes of protected tables;
//! - [`store`]: every statement on the lease table, and the token sequence;
//! - [`direct`]: the hot statements done on the table's heap and indexes directly;
//! - [`barrier`]: the per-resource locks (change, extend, fence) and the fence proofs;
//! - [`expiry`]: removing expired leases (the sweep);
//! - [`events`]: recording lease events and announcing them after commit;
//! - [`shared`]: shared memory (the event ring, the waiter table, the worker's wake-up time);
//! - [`waiting`]: waiting for a lease in first-come-first-served order;
//! - [`session`]: session-bound leases and the session locks behind them;
//! - [`transaction`]: what commit and abort do to a transaction's lease work;
//! - [`worker`]: the expiry worker that sweeps and publishes events;
//! - [`stats`]: the counters of `lease.stats`;
//! - [`settings`]: the `lease.*` settings;
//! - [`errors`]: the error enum and its SQLSTATEs.

use pgrx::prelude::*;

mod api;
mod barrier;
mod direct;
mod errors;
mod events;
mod expiry;
mod fence;
mod session;
mod settings;
mod shared;
mod stats;
mod store;
mod transaction;
mod waiting;
mod worker;

pgrx::pg_module_magic!();

// A fresh install of the current version runs the released 0.1.0 script and then each version
// step, exactly as an upgrade does: every object is defined once.
pgrx::extension_sql_file!("../sql/lease--0.1.0.sql", name = "v0_1_0", bootstrap);
pgrx::extension_sql_file!("../sql/lease--0.1.0--0.2.0.sql", name = "v0_2_0", requires = ["v0_1_0"]);
pgrx::extension_sql_file!("../sql/lease--0.2.0--0.3.0.sql", name = "v0_3_0", requires = ["v0_2_0"]);
pgrx::extension_sql_file!("../sql/lease--0.3.0--0.4.0.sql", name = "v0_4_0", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    transaction::register_callbacks();
    // SAFETY: a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        shared::request();
        worker::register();
    }
}

/// Hooks of the `#[pg_test]` harness.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
