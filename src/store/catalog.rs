//! Where the lease table lives: its OID, its primary key, its owner, its shape, the token
//! sequence and the lifeline table, looked up once per backend and forgotten whenever the
//! relation cache says they may have changed.
//!
//! Uses the shapes of `row`; tells `direct` when the table may have changed.

use std::cell::Cell;

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;

use super::row::Shape;

thread_local! {
    static CATALOG: Cell<Option<Catalog>> = const { Cell::new(None) };
}

#[derive(Clone, Copy)]
pub(super) struct Catalog {
    pub table: Oid,
    pub token_sequence: Oid,
    pub table_owner: Oid,
    pub primary_key: Oid,
    pub shape: Shape,
    /// `lease.lifelines` (0.5.0 on), or InvalidOid.
    pub lifelines: Oid,
}

impl Catalog {
    pub fn get() -> Catalog {
        if let Some(catalog) = CATALOG.with(Cell::get) {
            return catalog;
        }
        // SAFETY: catalog lookups; a missing schema raises an error (the functions exist only
        // while the extension does). The relcache callback is registered once per backend.
        let catalog = unsafe {
            static REGISTERED: std::sync::Once = std::sync::Once::new();
            REGISTERED
                .call_once(|| pg_sys::CacheRegisterRelcacheCallback(Some(forget_catalog), Datum::from(0)));
            let namespace = pg_sys::get_namespace_oid(c"lease".as_ptr(), false);
            let table = pg_sys::get_relname_relid(c"leases".as_ptr(), namespace);
            let token_sequence = pg_sys::get_relname_relid(c"token_seq".as_ptr(), namespace);
            if table == Oid::INVALID || token_sequence == Oid::INVALID {
                error!("the lease extension's objects are missing; recreate the extension");
            }
            let relation = pg_sys::RelationIdGetRelation(table);
            let table_owner = (*(*relation).rd_rel).relowner;
            let primary_key = pg_sys::RelationGetPrimaryKeyIndex(relation);
            pg_sys::RelationClose(relation);
            let lifelines = pg_sys::get_relname_relid(c"lifelines".as_ptr(), namespace);
            let has = |column: &std::ffi::CStr| pg_sys::get_attnum(table, column.as_ptr()) != 0;
            let shape = match (lifelines != Oid::INVALID && has(c"released_at"), has(c"slot")) {
                (true, true) => Shape::Slotted,
                (true, false) => Shape::Lifelines,
                _ => Shape::Classic,
            };
            Catalog { table, token_sequence, table_owner, primary_key, shape, lifelines }
        };
        CATALOG.with(|cell| cell.set(Some(catalog)));
        catalog
    }
}

/// The relation cache callback: forgets the catalog, and the direct path's layout verdict,
/// when a relation they were read from may have changed.
#[pg_guard]
unsafe extern "C-unwind" fn forget_catalog(_argument: Datum, relation: Oid) {
    super::direct::Layout::forget(relation);
    CATALOG.with(|cell| {
        let stale = cell.get().is_some_and(|catalog| {
            relation == Oid::INVALID
                || relation == catalog.table
                || relation == catalog.token_sequence
                || relation == catalog.lifelines
        });
        if stale {
            cell.set(None);
        }
    });
}

/// The OID of `lease.leases`.
pub fn lease_table() -> Oid {
    Catalog::get().table
}
