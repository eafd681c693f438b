//! Direct access to `lease.leases` for the calls that run most often: find a lease by its
//! resource through the primary key, insert a new one, delete one. The same statements exist
//! as kept SPI plans ([`crate::store`]); going to the heap and its indexes directly saves each
//! call a second executor start-up, which is most of what a lease call costs beyond the work
//! itself.
//!
//! It is only used where its decisions are exactly those of the SPI statements:
//! - every caller holds the resource's barrier lock in exclusive mode (or share mode, for a
//!   read), so no other transaction can insert, change or delete that resource's row meanwhile
//!   (the one exception, `lease_acquire_any`'s first read of its candidates, takes what it
//!   reads as a hint and decides each grant under the lock);
//! - the transaction runs at READ COMMITTED, where each statement reads the latest committed
//!   state; REPEATABLE READ and SERIALIZABLE keep the SPI statements, whose conflicts with a
//!   transaction's older snapshot raise serialization failures;
//! - the table has the shape this version created: its columns in their places and its primary
//!   key. Otherwise [`Layout::check`] says no and the SPI statements serve every call. Index
//!   entries are made by the executor's own index insertion, so any index an administrator
//!   adds (partial, on expressions) is maintained as an INSERT would maintain it.

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;

use crate::store::Timestamp;

/// Attribute numbers of `lease.leases`.
const RESOURCE: usize = 1;
const HOLDER: usize = 2;
const TOKEN: usize = 3;
const OWNER: usize = 4;
const EXPIRES_AT: usize = 7;
const SESSION_PID: usize = 8;
const COLUMNS: [&str; 9] = [
    "resource",
    "holder",
    "token",
    "owner",
    "acquired_at",
    "renewed_at",
    "expires_at",
    "session_pid",
    "application_name",
];

/// A lease row as found, with where it is.
pub struct FoundRow {
    tid: pg_sys::ItemPointerData,
    pub holder: String,
    pub token: i64,
    pub owner: Oid,
    pub expires_at: Timestamp,
    pub session_bound: bool,
}

/// What [`Layout::check`] found out about the table.
pub struct Layout;

impl Layout {
    /// Whether `table` has exactly the expected columns, in their places, and the primary key
    /// `primary_key`. (Its other indexes, partial or on expressions, are maintained by the
    /// executor's own index insertion, see [`insert`].)
    ///
    /// # Safety
    /// Must run in a transaction; `table` must be a table OID.
    pub unsafe fn check(table: Oid, primary_key: Oid) -> bool {
        let relation = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let descriptor = (*relation).rd_att;
        let attributes = (*descriptor).attrs.as_slice((*descriptor).natts as usize);
        let columns_match = attributes.len() == COLUMNS.len()
            && attributes.iter().zip(COLUMNS).all(|(attribute, name)| {
                !attribute.attisdropped
                    && std::ffi::CStr::from_ptr(attribute.attname.data.as_ptr()).to_bytes() == name.as_bytes()
            });
        let primary_key_matches = pg_sys::RelationGetPrimaryKeyIndex(relation) == primary_key;
        pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        columns_match && primary_key_matches
    }
}

/// Whether this transaction reads the latest committed state in each statement.
pub fn read_committed() -> bool {
    // SAFETY: XactIsoLevel is a backend-local global, read only.
    let level = unsafe { pg_sys::XactIsoLevel };
    level < pg_sys::XACT_REPEATABLE_READ as i32
}

/// Reads leases by resource through the primary key, seeing what has committed by the time
/// each row is read, and this transaction's own changes ([`pg_sys::SnapshotSelfData`]). Under
/// the resource's barrier lock that is the state every other writer of the resource left: a
/// writer's lock is released only after its commit (or abort) is visible. No snapshot is built
/// for it (a pass over the process array under its lock, on every call). One lookup serves any
/// number of reads.
pub struct Lookup {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Lookup {
    /// Opens the table and its primary key for reading.
    ///
    /// # Safety
    /// `table` and `primary_key` must be the lease table and its primary key, checked by
    /// [`Layout::check`].
    pub unsafe fn open(table: Oid, primary_key: Oid) -> Lookup {
        // Locks on the table and index are kept until the transaction ends, as a statement's are.
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(table, lock);
        let index = pg_sys::index_open(primary_key, lock);
        let scan = pg_sys::index_beginscan(heap, index, &raw mut pg_sys::SnapshotSelfData, 1, 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        Lookup { heap, index, scan, slot }
    }

    /// The lease on `resource`, expired or not. Exact when the caller holds the resource's
    /// barrier lock; otherwise a hint that may be outdated by the time it is used.
    pub fn get(&mut self, resource: &str) -> Option<FoundRow> {
        // SAFETY: the scan and slot belong to this open lookup; the key is a text datum that
        // lives until the scan is rescanned or ended.
        unsafe {
            let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut key,
                RESOURCE as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                resource.into_datum().expect("text datum"),
            );
            pg_sys::index_rescan(self.scan, &mut key, 1, std::ptr::null_mut(), 0);
            let slot = self.slot;
            pg_sys::index_getnext_slot(self.scan, pg_sys::ScanDirection::ForwardScanDirection, slot).then(
                || {
                    pg_sys::slot_getsomeattrs_int(slot, SESSION_PID as i32);
                    let values = std::slice::from_raw_parts((*slot).tts_values, SESSION_PID);
                    let nulls = std::slice::from_raw_parts((*slot).tts_isnull, SESSION_PID);
                    let column = |number: usize| (values[number - 1], nulls[number - 1]);
                    let (holder, holder_null) = column(HOLDER);
                    let (token, token_null) = column(TOKEN);
                    let (owner, owner_null) = column(OWNER);
                    let (expires_at, expires_null) = column(EXPIRES_AT);
                    FoundRow {
                        tid: (*slot).tts_tid,
                        holder: String::from_datum(holder, holder_null).expect("holder is not null"),
                        token: i64::from_datum(token, token_null).expect("token is not null"),
                        owner: Oid::from_datum(owner, owner_null).expect("owner is not null"),
                        expires_at: i64::from_datum(expires_at, expires_null)
                            .expect("expires_at is not null"),
                        session_bound: !nulls[SESSION_PID - 1],
                    }
                },
            )
        }
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // an error is unwinding: the transaction's abort releases all of it
        }
        // SAFETY: releases what `open` acquired, once; the locks stay until the transaction ends.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_endscan(self.scan);
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// Inserts a new lease (the caller found none), its columns in the table's order (NULL as None), with
/// its index entries, made by the executor's index insertion as an INSERT makes them (partial
/// and expression indexes included).
///
/// # Safety
/// As for [`Lookup::open`]; the caller holds the resource's barrier lock in exclusive mode and
/// found no row for it.
pub unsafe fn insert(table: Oid, values: &[Option<Datum>; 9]) {
    pg_sys::PreventCommandIfReadOnly(c"INSERT".as_ptr());
    let heap = pg_sys::table_open(table, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    let mut datums: Vec<Datum> = values.iter().map(|value| value.unwrap_or(Datum::from(0))).collect();
    let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
    let tuple = pg_sys::heap_form_tuple((*heap).rd_att, datums.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::simple_heap_insert(heap, tuple);

    let estate = pg_sys::CreateExecutorState();
    let result_relation = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()).cast();
    pg_sys::InitResultRelInfo(result_relation, heap, 1, std::ptr::null_mut(), 0);
    pg_sys::ExecOpenIndices(result_relation, false);
    let slot = pg_sys::MakeSingleTupleTableSlot((*heap).rd_att, &raw const pg_sys::TTSOpsHeapTuple);
    pg_sys::ExecStoreHeapTuple(tuple, slot, false);
    // Checks the primary key's uniqueness too, which cannot fail under the resource's lock.
    pg_sys::ExecInsertIndexTuples(
        result_relation,
        slot,
        estate,
        false,
        false,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::ExecCloseIndices(result_relation);
    pg_sys::FreeExecutorState(estate);
    pg_sys::heap_freetuple(tuple);
    pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
    pg_sys::CommandCounterIncrement();
}

/// Deletes the row a [`Lookup`] returned.
///
/// # Safety
/// As for [`Lookup::open`]; `row` must have been found in this call, under the resource's
/// barrier lock held in exclusive mode.
pub unsafe fn delete(table: Oid, row: &FoundRow) {
    pg_sys::PreventCommandIfReadOnly(c"DELETE".as_ptr());
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    let heap = pg_sys::table_open(table, lock);
    let mut tid = row.tid;
    pg_sys::simple_heap_delete(heap, &mut tid);
    pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
    pg_sys::CommandCounterIncrement();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn the_table_as_created_is_served_directly() {
        let table: pg_sys::Oid = Spi::get_one("SELECT 'lease.leases'::regclass::oid").unwrap().unwrap();
        let primary_key: pg_sys::Oid = Spi::get_one(
            "SELECT indexrelid FROM pg_index WHERE indrelid = 'lease.leases'::regclass AND indisprimary",
        )
        .unwrap()
        .unwrap();
        // SAFETY: inside a transaction, with the lease table's OID.
        assert!(unsafe { super::Layout::check(table, primary_key) });
    }

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
