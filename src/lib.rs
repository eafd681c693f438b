//! `lease`: fenced, time-limited leases for PostgreSQL.
//!
//! A lease is the exclusive, time-limited right of one holder to one resource, kept as a row of
//! `lease.leases` and guarded by a transaction-scoped advisory lock per resource. Modules:
//! - [`api`]: the SQL-callable functions and their argument checks;
//! - [`store`]: every statement on the lease table, and the token sequence;
//! - [`barrier`]: the per-resource locks that make `lease_check` a fence;
//! - [`settings`]: the `lease.*` settings;
//! - [`errors`]: the error enum and its SQLSTATEs.

use pgrx::prelude::*;

mod api;
mod barrier;
mod errors;
mod settings;
mod store;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
}

/// Hooks of the `#[pg_test]` harness.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
