//! Inserting and deleting leases on the heap, with the executor's own index maintenance.
//!
//! Uses the column map (`row`) and `layout`.

use pgrx::pg_sys::{self, Datum, Oid};

use super::{Found, Layout};
use crate::store::row::Shape;

/// Inserts new leases with their index entries, made by the executor's index insertion as an
/// INSERT makes them (partial and expression indexes included). The table, its indexes and the
/// executor state (with any index predicate, compiled once) stay open for any number of
/// inserts.
pub(in crate::store) struct Inserter {
    heap: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    result_relation: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    shape: Shape,
}

impl Inserter {
    /// Opens the table and its indexes for inserting.
    ///
    /// # Safety
    /// As for [`super::Lookup::open`].
    pub unsafe fn open(table: Oid, shape: Shape) -> Option<Inserter> {
        let heap = pg_sys::table_open(table, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        // DDL that needs no lock stronger than the reader's (CREATE TRIGGER) may have committed
        // since the store checked: check again under the writer's lock.
        if !Layout::matches(heap, shape) {
            pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        }
        let estate = pg_sys::CreateExecutorState();
        let result_relation: *mut pg_sys::ResultRelInfo = pg_sys::MemoryContextAllocZero(
            (*estate).es_query_cxt,
            std::mem::size_of::<pg_sys::ResultRelInfo>(),
        )
        .cast();
        pg_sys::InitResultRelInfo(result_relation, heap, 1, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(result_relation, false);
        let slot = pg_sys::MakeSingleTupleTableSlot((*heap).rd_att, &raw const pg_sys::TTSOpsHeapTuple);
        Some(Inserter { heap, estate, result_relation, slot, shape })
    }

    /// Inserts a new lease (the caller found none), its columns in the table's order (NULL as
    /// None), as many as the shape the table was opened with has.
    ///
    /// # Safety
    /// The caller holds the resource's barrier lock in change mode and found no row for it.
    pub unsafe fn insert(&mut self, values: &[Option<Datum>]) {
        assert_eq!(values.len(), self.shape.columns().len(), "a value for every column");
        pg_sys::PreventCommandIfReadOnly(c"INSERT".as_ptr());
        let mut datums: Vec<Datum> = values.iter().map(|value| value.unwrap_or(Datum::from(0))).collect();
        let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
        let tuple = pg_sys::heap_form_tuple((*self.heap).rd_att, datums.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(self.heap, tuple);
        pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
        // Checks the primary key's uniqueness too, which cannot fail under the resource's lock.
        pg_sys::ExecInsertIndexTuples(
            self.result_relation,
            self.slot,
            self.estate,
            false,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        pg_sys::ExecClearTuple(self.slot);
        pg_sys::heap_freetuple(tuple);
        // What evaluating index predicates allocated (ResetPerTupleExprContext).
        let per_tuple = (*self.estate).es_per_tuple_exprcontext;
        if !per_tuple.is_null() {
            pg_sys::MemoryContextReset((*per_tuple).ecxt_per_tuple_memory);
        }
        pg_sys::CommandCounterIncrement();
    }
}

impl Drop for Inserter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // an error is unwinding: the transaction's abort releases all of it
        }
        // SAFETY: releases what `open` acquired, once; the table's lock stays until the
        // transaction ends.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::ExecCloseIndices(self.result_relation);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// Deletes the row a [`super::Lookup`] returned; false (nothing done) if the table no longer has
/// the layout the direct path needs.
///
/// # Safety
/// As for [`super::Lookup::open`]; `found` must have been found in this call, under the resource's
/// barrier lock held in change mode.
pub(in crate::store) unsafe fn delete(table: Oid, shape: Shape, found: &Found) -> bool {
    pg_sys::PreventCommandIfReadOnly(c"DELETE".as_ptr());
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    let heap = pg_sys::table_open(table, lock);
    if !Layout::matches(heap, shape) {
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        return false; // see Inserter::open
    }
    let mut tid = found.tid;
    pg_sys::simple_heap_delete(heap, &mut tid);
    pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
    pg_sys::CommandCounterIncrement();
    true
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn direct_inserts_respect_partial_indexes() {
        Spi::run(
            "SELECT lease_acquire('plain', 'h', '1 min'), lease_acquire('bound', 'h', '1 min', NULL, true)",
        )
        .unwrap();
        // Counted through the partial index on session-bound leases only: an entry for the
        // plain lease would be counted too, since the scan trusts the index's predicate.
        Spi::run("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off").unwrap();
        let plan = Spi::connect(|client| {
            let lines = client
                .select("EXPLAIN SELECT count(*) FROM lease.leases WHERE session_pid IS NOT NULL", None, &[])
                .unwrap();
            lines.map(|line| line.get::<String>(1).unwrap().unwrap_or_default()).collect::<Vec<_>>().join(" ")
        });
        assert!(plan.contains("leases_session_bound_idx"), "{plan}");
        let bound: i64 =
            Spi::get_one("SELECT count(*) FROM lease.leases WHERE session_pid IS NOT NULL").unwrap().unwrap();
        assert_eq!(bound, 1);
    }
}
