//! The lease store: every statement that reads or writes `lease.leases` and
//! `lease.lifelines`, and the token sequence.
//!
//! - [`statements`]: the statements' text, written for each shape of the table,
//!   schema-qualified; [`plans`]: preparing them once per backend; [`results`]: reading what
//!   they return;
//! - [`catalog`]: where the tables, their primary keys and the sequence are, and the shape of
//!   `lease.leases` (which version of the extension the database has);
//! - [`row`]: the column maps, the shapes and the row types;
//! - [`grants`]: reading and changing one resource's lease;
//! - [`scans`]: statements over many leases (the sweeps, the claim's first test);
//! - [`tokens`]: fencing tokens, reserved durably in blocks;
//! - [`lifelines`]: the statements on `lease.lifelines`;
//! - [`inspect`]: the row `lease_info` shows, and who may see its token;
//! - `direct` (private): the hot statements done on the heap and index directly (and the read
//!   of a lifeline by its id), only where that is indistinguishable from SQL.
//!
//! Statements run as the owner of `lease.leases` (ordinary roles have no rights on it), inside
//! a [`Store`] that switches the user and restores it when dropped.
//!
//! Uses vocabulary, errors, settings (whether events carry data), shmem (the token blocks),
//! barrier (the token reservation lock) and subtransaction.

use std::cell::{Cell, RefCell};

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;

use crate::errors::LeaseError;

mod catalog;
mod direct;
mod grants;
mod inspect;
mod lifelines;
mod plans;
mod results;
mod row;
mod scans;
mod statements;
pub mod tokens;

use catalog::Catalog;
use plans::Statement;

pub use catalog::lease_table;
pub use grants::Located;
pub use lifelines::Lifeline;
pub use row::{Attachment, Binding, Lease, LeaseMode, Listed, NewGrant, Shape};

/// An open SPI connection running as the owner of `lease.leases`.
pub struct Store {
    caller: Oid,
    saved_security_context: i32,
    catalog: Catalog,
    /// Whether this call reads and writes the table directly (`direct`).
    direct: bool,
    /// See [`Store::transaction_snapshot`].
    transaction_snapshot: bool,
    /// Connected to SPI (on the first statement that needs it).
    spi_connected: Cell<bool>,
    saved_scan_settings: Cell<Option<(bool, bool)>>,
    /// The direct lookup and insert of this store, opened on first use and kept for the
    /// store's life: a call that grants many leases opens the table and its indexes once.
    lookup: RefCell<Option<direct::Lookup>>,
    inserter: RefCell<Option<direct::Inserter>>,
    /// The direct reader of lifelines, opened on first use (None inside: SQL serves).
    lifeline_lookup: RefCell<Option<Option<direct::LifelineLookup>>>,
}

impl Store {
    /// Switches to the table owner; dropping the store switches back (and disconnects from
    /// SPI if a statement connected).
    pub fn open() -> Store {
        let mut caller = Oid::INVALID;
        let mut saved_security_context = 0;
        // The catalog (and the table's shape) as of now, not as of this transaction's last lock:
        // an ALTER EXTENSION UPDATE may have committed since.
        // SAFETY: processes pending invalidation messages, as any lock acquisition does.
        unsafe { pg_sys::AcceptInvalidationMessages() };
        let catalog = Catalog::get();
        // SAFETY: user-id bookkeeping. The user id is restored in Drop, and by PostgreSQL
        // itself if the transaction aborts first.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut caller, &mut saved_security_context);
            pg_sys::SetUserIdAndSecContext(
                catalog.table_owner,
                saved_security_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
        let read_committed = direct::read_committed();
        Store {
            caller,
            saved_security_context,
            catalog,
            // SAFETY: the lease table, opened (and its layout checked) under the reader's lock.
            direct: read_committed
                && unsafe {
                    direct::Layout::check(
                        catalog.table,
                        catalog.shape,
                        pg_sys::AccessShareLock as pg_sys::LOCKMODE,
                    )
                },
            transaction_snapshot: !read_committed,
            spi_connected: Cell::new(false),
            saved_scan_settings: Cell::new(None),
            lookup: RefCell::new(None),
            inserter: RefCell::new(None),
            lifeline_lookup: RefCell::new(None),
        }
    }

    /// Connects to SPI with sequential and bitmap scans off (see [`plans`]), once.
    fn connect(&self) {
        if self.spi_connected.replace(true) {
            return;
        }
        // SAFETY: planner settings are plain backend-local globals, restored in Drop; the SPI
        // connection is closed in Drop (or by transaction abort).
        unsafe {
            self.saved_scan_settings.set(Some((pg_sys::enable_seqscan, pg_sys::enable_bitmapscan)));
            pg_sys::enable_seqscan = false;
            pg_sys::enable_bitmapscan = false;
            pg_sys::SPI_connect();
        }
    }

    /// The shape of the lease table: what this database's version of the extension has.
    pub fn shape(&self) -> Shape {
        self.catalog.shape
    }

    /// The role that called the lease function.
    pub fn caller(&self) -> Oid {
        self.caller
    }

    /// Ok if the caller has the privileges of `owner` (the rule for acting on a lease or a
    /// lifeline); otherwise the owner's name, for the error.
    pub fn ensure_privileges_of(&self, owner: Oid) -> Result<(), String> {
        // SAFETY: catalog lookups on valid role OIDs.
        unsafe {
            if pg_sys::has_privs_of_role(self.caller, owner) {
                return Ok(());
            }
            let name = pg_sys::GetUserNameFromId(owner, true);
            Err(match name.is_null() {
                true => owner.to_u32().to_string(),
                false => std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned(),
            })
        }
    }

    /// Whether this transaction reads through one snapshot for its whole life (REPEATABLE READ
    /// or SERIALIZABLE): its decisions then read the lease as last committed, and a write on a
    /// lease changed since that snapshot is a serialization failure.
    pub fn transaction_snapshot(&self) -> bool {
        self.transaction_snapshot
    }

    /// Raises 40001 if this transaction reads through a snapshot older than the last change
    /// of the resource's lease: a write decided on the latest lease must not be made by a
    /// transaction whose own reads are older. The caller holds the resource's barrier lock.
    pub fn ensure_snapshot_current(&self, resource: &str) {
        if self.transaction_snapshot && self.changed_since_snapshot(resource) {
            LeaseError::SerializationFailure { resource: resource.into() }.raise();
        }
    }

    /// Whether the resource's lease changed after the snapshot of the calling statement was
    /// taken (`direct::Lookup::changed_since`). The caller holds the resource's barrier lock.
    pub fn changed_since_snapshot(&self, resource: &str) -> bool {
        self.row_changed_since_snapshot(resource, None)
    }

    /// As [`Store::ensure_snapshot_current`], for a call on one row (the one at `slot`) of the
    /// resource: only a change of that row counts. The caller holds the row's barrier lock.
    pub fn ensure_row_current(&self, resource: &str, slot: i32) {
        if self.transaction_snapshot && self.row_changed_since_snapshot(resource, Some(slot)) {
            LeaseError::SerializationFailure { resource: resource.into() }.raise();
        }
    }

    /// Whether a row of the resource (any, or the one at `slot`) changed after the calling
    /// statement's snapshot was taken.
    fn row_changed_since_snapshot(&self, resource: &str, slot: Option<i32>) -> bool {
        // SAFETY: the active snapshot is the calling statement's (a function always runs with
        // one).
        self.with_lookup(|lookup| unsafe {
            lookup.changed_since(resource, slot, pg_sys::GetActiveSnapshot())
        })
    }

    /// Runs `read` on this store's lookup, opening it on first use.
    fn with_lookup<R>(&self, read: impl FnOnce(&mut direct::Lookup) -> R) -> R {
        let Catalog { table, primary_key, shape, .. } = self.catalog;
        if primary_key == Oid::INVALID {
            error!("lease.leases has no primary key; recreate the extension");
        }
        let mut lookup = self.lookup.borrow_mut();
        // SAFETY: the lease table and its primary key; `find` reads rows only when the table's
        // shape was checked.
        read(lookup.get_or_insert_with(|| unsafe { direct::Lookup::open(table, primary_key, shape) }))
    }

    /// The resource's rows as `direct` finds them (in slot order), when this call reads
    /// directly, with their lifelines' expiry in place ([`Store::resolve`]). Exact when the
    /// caller holds the barrier locks of the resource's rows; a hint otherwise.
    fn find(&self, resource: &str) -> Option<Vec<direct::Found>> {
        let found = self.direct.then(|| self.with_lookup(|lookup| lookup.all(resource)))?;
        Some(
            found
                .into_iter()
                .map(|found| direct::Found { tid: found.tid, lease: self.resolve(found.lease) })
                .collect(),
        )
    }

    /// Runs a kept plan with the given arguments, processing at most `limit` rows (0: all);
    /// with `latest`, under the latest snapshot instead of the transaction's. Returns the
    /// number of rows processed.
    fn execute(&self, statement: Statement, args: &[Option<Datum>], latest: bool, limit: i64) -> u64 {
        self.connect();
        let plan = plans::plan(statement, self.catalog.shape);
        let mut values: Vec<Datum> = args.iter().map(|a| a.unwrap_or(Datum::from(0))).collect();
        let nulls: Vec<std::ffi::c_char> =
            args.iter().map(|a| if a.is_some() { b' ' } else { b'n' } as std::ffi::c_char).collect();
        // SAFETY: the plan was prepared with exactly these argument types and counts; values and
        // nulls outlive the call. SPI errors are raised through the guarded FFI boundary.
        unsafe {
            let status = if latest {
                pg_sys::SPI_execute_snapshot(
                    plan.as_ptr(),
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    pg_sys::GetLatestSnapshot(),
                    std::ptr::null_mut(),
                    false,
                    // AFTER triggers of a write (a trigger of the administrator's on the table)
                    // are fired at the end of the statement, as SPI_execute_plan fires them.
                    true,
                    limit,
                )
            } else {
                pg_sys::SPI_execute_plan(plan.as_ptr(), values.as_mut_ptr(), nulls.as_ptr(), false, limit)
            };
            if status < 0 {
                error!("lease store statement {statement:?} failed with SPI status {status}");
            }
            pg_sys::SPI_processed
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Before SPI_finish: they may have been opened in the SPI connection's memory context.
        drop(self.lookup.take());
        drop(self.inserter.take());
        drop(self.lifeline_lookup.take());
        // SAFETY: undoes exactly what `open` did. While unwinding from a PostgreSQL error the
        // SPI connection is left for transaction abort to close, as PostgreSQL expects; the
        // planner settings are plain backend-local globals, restored on every path.
        unsafe {
            if let Some(settings) = self.saved_scan_settings.get() {
                if !std::thread::panicking() {
                    pg_sys::SPI_finish();
                }
                (pg_sys::enable_seqscan, pg_sys::enable_bitmapscan) = settings;
            }
            pg_sys::SetUserIdAndSecContext(self.caller, self.saved_security_context);
        }
    }
}
