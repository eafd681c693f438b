//! Reading a lifeline by its id through the primary key of `lease.lifelines`, under the latest
//! snapshot: what the SQL statement reads (a statement at READ COMMITTED, and the store's
//! reads of a lifeline at every level, see the latest committed state), without the
//! executor's start-up.
//!
//! Uses the lifeline column map (`row`).

use pgrx::datum::Interval;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

use crate::store::lifelines::Lifeline;
use crate::store::row::LIFELINE_COLUMNS;

/// Attribute numbers (1-based) of the columns read.
const ID: i32 = 1;
const OWNER: usize = 3;
const TTL: usize = 4;
const EXPIRES_AT: usize = 7;
const SESSION_PID: usize = 8;

/// `lease.lifelines` and its primary key, open for reading.
pub(in crate::store) struct LifelineLookup {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
}

impl LifelineLookup {
    /// Opens the table and its primary key, if the table is as created (its columns, its key
    /// on `id` alone, a btree of integers), row-level security could not hide a row from its
    /// owner, and the current role (the store's, the owner of `lease.leases`) may read it; None
    /// otherwise (the SQL statement serves, and answers as SQL does).
    ///
    /// # Safety
    /// `table` must be `lease.lifelines`, in a transaction.
    pub unsafe fn open(table: Oid) -> Option<LifelineLookup> {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(table, lock);
        let readable =
            pg_sys::pg_class_aclcheck(table, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK;
        // The key of the table as opened (concurrent DDL may have replaced it since the catalog
        // was read).
        let primary_key = pg_sys::RelationGetPrimaryKeyIndex(heap);
        if !readable || primary_key == Oid::INVALID || !matches(heap) {
            pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        }
        let index = pg_sys::index_open(primary_key, lock);
        let index_form = &*(*index).rd_index;
        let on_id = index_form.indnatts == 1
            && index_form.indkey.values.as_slice(1)[0] == ID as i16
            && (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
            && *(*index).rd_opfamily == pg_sys::INTEGER_BTREE_FAM_OID;
        if !on_id {
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        }
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        Some(LifelineLookup { heap, index, slot })
    }

    /// The lifeline `id` as last committed (and as changed by this transaction), if it exists.
    pub fn get(&mut self, id: i64) -> Option<Lifeline> {
        // SAFETY: an index scan of the open primary key under a registered MVCC snapshot, ended
        // and unregistered before returning; the columns were checked.
        unsafe {
            let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            let scan = pg_sys::index_beginscan(self.heap, self.index, snapshot, 1, 0);
            let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut key,
                ID as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                Oid::from(pg_sys::F_INT8EQ),
                id.into_datum().expect("an int8 datum"),
            );
            pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
            let slot = self.slot;
            let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
                .then(|| {
                    pg_sys::slot_getsomeattrs_int(slot, SESSION_PID as i32);
                    let values = std::slice::from_raw_parts((*slot).tts_values, SESSION_PID);
                    let nulls = std::slice::from_raw_parts((*slot).tts_isnull, SESSION_PID);
                    let ttl = Interval::from_datum(values[TTL - 1], nulls[TTL - 1]).expect("ttl is not null");
                    Lifeline {
                        owner: Oid::from_datum(values[OWNER - 1], nulls[OWNER - 1])
                            .expect("owner is not null"),
                        expires_at: i64::from_datum(values[EXPIRES_AT - 1], nulls[EXPIRES_AT - 1])
                            .expect("expires_at is not null"),
                        session_bound: !nulls[SESSION_PID - 1],
                        ttl: interval_usecs(&ttl),
                    }
                });
            pg_sys::ExecClearTuple(slot);
            pg_sys::index_endscan(scan);
            pg_sys::UnregisterSnapshot(snapshot);
            found
        }
    }
}

/// An interval's length in microseconds as the SQL statement computes it
/// (`EXTRACT(EPOCH FROM ttl)`: a year of months is 365.25 days, another month 30 days, a day 24
/// hours), at most 10^18.
fn interval_usecs(interval: &Interval) -> i64 {
    const DAY: i128 = 86_400_000_000;
    let months = i128::from(interval.months());
    let usecs = months / 12 * (DAY * 36_525 / 100)
        + months % 12 * 30 * DAY
        + i128::from(interval.days()) * DAY
        + i128::from(interval.micros());
    usecs.clamp(i128::from(i64::MIN), 1_000_000_000_000_000_000) as i64
}

/// Whether `relation` is `lease.lifelines` as created: a plain heap table with exactly the
/// expected columns, without row-level security.
///
/// # Safety
/// `relation` must be open (and locked).
unsafe fn matches(relation: pg_sys::Relation) -> bool {
    let form = &*(*relation).rd_rel;
    let descriptor = (*relation).rd_att;
    if form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
        || form.relam != pg_sys::HEAP_TABLE_AM_OID
        || form.relrowsecurity
    {
        return false;
    }
    let attributes = (*descriptor).attrs.as_slice((*descriptor).natts as usize);
    attributes.len() == LIFELINE_COLUMNS.len()
        && attributes.iter().zip(LIFELINE_COLUMNS).all(|(attribute, (name, type_oid, not_null))| {
            !attribute.attisdropped
                && attribute.atttypid == type_oid
                && attribute.attnotnull == not_null
                && std::ffi::CStr::from_ptr(attribute.attname.data.as_ptr()).to_bytes() == name.as_bytes()
        })
}

impl Drop for LifelineLookup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // an error is unwinding: the transaction's abort releases all of it
        }
        // SAFETY: releases what `open` acquired, once; the locks stay until the transaction ends.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}
