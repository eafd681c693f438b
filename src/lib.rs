//! `lease`: fenced, time-limited leases for PostgreSQL.
//!
//! A lease is the exclusive, time-limited right of one holder to one resource, kept as a row of
//! `lease.leases` and guarded by a transaction-scoped advisory lock per resource. The modules,
//! bottom to top; each uses only modules above it in this list (`scripts/check-layers.py`
//! checks it):
//! - [`vocabulary`]: the shared words (resource, holder, token...), `Timestamp`, the name limits;
//! - [`errors`]: the error enum and its SQLSTATEs;
//! - [`settings`]: the `lease.*` settings;
//! - [`shmem`]: asking for shared memory, which each part sizes and initialises itself;
//! - [`stats`]: the counters of `lease.stats`;
//! - [`barrier`]: the per-resource locks (change, extend, fence) and the fence proofs;
//! - [`subtransaction`]: running a step in an internal subtransaction;
//! - [`store`]: every statement on the lease table, the token blocks, the direct access;
//! - [`events`]: recording lease events, the per-database event rings, the payload;
//! - [`session`]: session-bound leases and the session locks behind them;
//! - [`waiting`]: the waiter table and first-come-first-served queues;
//! - [`lifeline`]: lifelines, one expiry that many leases share;
//! - [`expiry`]: removing expired leases and the leases of lapsed lifelines (the sweep);
//! - [`grant`]: acquiring: the decision of a grant (pure), attempts, waiting;
//! - [`holding`]: the calls with a token (renew, release, check) and revocation;
//! - [`api`]: the SQL entry points and their argument checks;
//! - [`fence`]: the `lease_fence` trigger;
//! - [`transaction`]: what commit and abort do to a transaction's lease work;
//! - [`worker`]: the launcher and the expiry workers.

use pgrx::prelude::*;

mod vocabulary;

mod errors;
mod settings;

mod shmem;
mod stats;

mod barrier;
mod subtransaction;

mod store;

mod events;
mod session;
mod waiting;

mod lifeline;

mod expiry;
mod grant;
mod holding;

mod api;
mod fence;
mod transaction;
mod worker;

pgrx::pg_module_magic!();

// A fresh install of the current version runs the released 0.1.0 script and then each version
// step, exactly as an upgrade does: every object is defined once.
pgrx::extension_sql_file!("../sql/lease--0.1.0.sql", name = "v0_1_0", bootstrap);
pgrx::extension_sql_file!("../sql/lease--0.1.0--0.2.0.sql", name = "v0_2_0", requires = ["v0_1_0"]);
pgrx::extension_sql_file!("../sql/lease--0.2.0--0.3.0.sql", name = "v0_3_0", requires = ["v0_2_0"]);
pgrx::extension_sql_file!("../sql/lease--0.3.0--0.4.0.sql", name = "v0_4_0", requires = ["v0_3_0"]);
pgrx::extension_sql_file!("../sql/lease--0.4.0--0.5.0.sql", name = "v0_5_0", requires = ["v0_4_0"]);
pgrx::extension_sql_file!("../sql/lease--0.5.0--0.6.0.sql", name = "v0_6_0", requires = ["v0_5_0"]);
pgrx::extension_sql_file!("../sql/lease--0.6.0--0.7.0.sql", name = "v0_7_0", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    transaction::register_callbacks();
    // SAFETY: a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        // The parts of shared memory, each sized and initialised by its own module.
        shmem::request(&[
            stats::SHMEM,
            store::tokens::SHMEM,
            waiting::table::SHMEM,
            events::database::SHMEM,
            events::listeners::SHMEM,
        ]);
        events::listeners::install_hook();
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
