//! Direct access to `lease.leases` for the calls that run most often: find a lease by its
//! resource through the primary key, insert a new one, delete one. The same statements exist
//! as kept SPI plans ([`crate::store`]); going to the heap and its indexes directly saves each
//! call a second executor start-up, which is most of what a lease call costs beyond the work
//! itself.
//!
//! It is only used where its decisions are exactly those of the SPI statements:
//! - every caller that decides holds the resource's barrier lock (change mode to insert or
//!   delete; any mode for a read), so no other transaction can insert or delete that resource's
//!   row meanwhile; reads made without the lock (an acquire's look before it takes the lock, a
//!   claim's first test of its candidates, a renewal's or release's look before it queues) are
//!   hints, and every decision is made again under the lock;
//! - the transaction runs at READ COMMITTED, where each statement reads the latest committed
//!   state; REPEATABLE READ and SERIALIZABLE keep the SPI statements, whose conflicts with a
//!   transaction's older snapshot raise serialization failures;
//! - the table has the shape this version created: its columns in their places and its primary
//!   key, and nothing a direct write would bypass (triggers, row-level security, CHECK
//!   constraints, rules). Otherwise [`Layout::check`] says no and the SPI statements serve every call. Index
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

/// A lease row as found, with where it is.
pub struct FoundRow {
    tid: pg_sys::ItemPointerData,
    pub holder: String,
    pub token: i64,
    pub owner: Oid,
    pub expires_at: Timestamp,
    pub session_bound: bool,
}

/// The shape of `lease.leases` that the direct path is equivalent to SQL on.
pub struct Layout;

/// The columns of `lease.leases` as created, in order: name, type, NOT NULL.
const COLUMNS: [(&str, Oid, bool); 9] = [
    ("resource", pg_sys::TEXTOID, true),
    ("holder", pg_sys::TEXTOID, true),
    ("token", pg_sys::INT8OID, true),
    ("owner", pg_sys::REGROLEOID, true),
    ("acquired_at", pg_sys::TIMESTAMPTZOID, true),
    ("renewed_at", pg_sys::TIMESTAMPTZOID, true),
    ("expires_at", pg_sys::TIMESTAMPTZOID, true),
    ("session_pid", pg_sys::INT4OID, false),
    ("application_name", pg_sys::TEXTOID, false),
];

impl Layout {
    /// Whether the open relation `relation` is the table as created: a plain heap table with
    /// exactly the expected columns (names, types, NOT NULL, no identity or generated column,
    /// the resource's collation) and its primary key on `resource`, and nothing a direct write
    /// would bypass: no trigger (a foreign key
    /// referencing the table is one), no row-level security, no CHECK constraint, no rule, no
    /// inheritance child. Its other indexes (partial, on expressions) are maintained by the
    /// executor's own index insertion, see [`Inserter`]. Checked on the relation actually
    /// opened, under its lock, so that concurrent DDL is seen.
    ///
    /// # Safety
    /// `relation` must be open (and locked) in the current transaction.
    pub unsafe fn matches(relation: pg_sys::Relation) -> bool {
        let form = &*(*relation).rd_rel;
        let descriptor = (*relation).rd_att;
        if form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || form.relam != Oid::from(pg_sys::HEAP_TABLE_AM_OID)
            || form.relhassubclass
            || form.relispartition
            || form.relrowsecurity
            || !(*relation).trigdesc.is_null()
            || !(*relation).rd_rules.is_null()
            || (!(*descriptor).constr.is_null() && (*(*descriptor).constr).num_check > 0)
        {
            return false;
        }
        let attributes = (*descriptor).attrs.as_slice((*descriptor).natts as usize);
        let columns_match = attributes.len() == COLUMNS.len()
            && attributes.iter().zip(COLUMNS).all(|(attribute, (name, type_oid, not_null))| {
                !attribute.attisdropped
                    && attribute.atttypid == type_oid
                    && attribute.attnotnull == not_null
                    && attribute.attgenerated == 0
                    && attribute.attidentity == 0
                    && std::ffi::CStr::from_ptr(attribute.attname.data.as_ptr()).to_bytes() == name.as_bytes()
            })
            && attributes[RESOURCE - 1].attcollation == Oid::from(pg_sys::C_COLLATION_OID);
        columns_match && primary_key_is_resource(relation)
    }

    /// Opens `table` with `lock` (which also takes in the invalidations of concurrent DDL that
    /// committed) and says whether it [`Layout::matches`]; the lock is kept until the
    /// transaction ends, as a statement keeps it.
    ///
    /// # Safety
    /// Must run in a transaction; `table` must be a table OID.
    pub unsafe fn check(table: Oid, lock: pg_sys::LOCKMODE) -> bool {
        let relation = pg_sys::table_open(table, lock);
        let matches = Layout::matches(relation);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        matches
    }
}

/// Whether the table's primary key is on `resource` alone, the column lookups scan it by.
///
/// # Safety
/// `relation` must be open (and locked) in the current transaction.
unsafe fn primary_key_is_resource(relation: pg_sys::Relation) -> bool {
    // The relation cache keeps the set (a copy is returned); it opens the indexes only when the
    // cache entry was rebuilt.
    let columns = pg_sys::RelationGetIndexAttrBitmap(
        relation,
        pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_PRIMARY_KEY,
    );
    let on_resource = pg_sys::bms_num_members(columns) == 1
        && pg_sys::bms_is_member(RESOURCE as i32 - pg_sys::FirstLowInvalidHeapAttributeNumber, columns);
    pg_sys::bms_free(columns);
    on_resource
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
    /// A scan of every version of a row ([`Lookup::changed_since`]), begun on first use.
    history_scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Lookup {
    /// Opens the table and its primary key for reading.
    ///
    /// # Safety
    /// `table` and `primary_key` must be the lease table and its primary key; [`Lookup::get`]
    /// also needs the columns that [`Layout::check`] checks.
    pub unsafe fn open(table: Oid, primary_key: Oid) -> Lookup {
        // Locks on the table and index are kept until the transaction ends, as a statement's are.
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(table, lock);
        let index = pg_sys::index_open(primary_key, lock);
        let scan = pg_sys::index_beginscan(heap, index, &raw mut pg_sys::SnapshotSelfData, 1, 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        Lookup { heap, index, scan, history_scan: std::ptr::null_mut(), slot }
    }

    /// The lease on `resource`, expired or not. Exact when the caller holds the resource's
    /// barrier lock; otherwise a hint that may be outdated by the time it is used.
    pub fn get(&mut self, resource: &str) -> Option<FoundRow> {
        // SAFETY: the scan and slot belong to this open lookup, on the lease table's primary
        // key; the table's columns were checked.
        unsafe {
            rescan(self.scan, resource);
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

    /// Whether the lease on `resource` changed after `snapshot` was taken: whether any version
    /// of its row, live or dead, was inserted or deleted by another transaction that committed
    /// without `snapshot` seeing it. Exact when the caller holds the resource's barrier lock:
    /// no other writer is then in progress, and no version a snapshot of this backend cannot
    /// see yet has been pruned away. Changes made by this transaction do not count.
    ///
    /// # Safety
    /// `snapshot` must be a valid MVCC snapshot (the statement's), registered or active.
    pub unsafe fn changed_since(&mut self, resource: &str, snapshot: pg_sys::Snapshot) -> bool {
        if self.history_scan.is_null() {
            self.history_scan =
                pg_sys::index_beginscan(self.heap, self.index, &raw mut pg_sys::SnapshotAnyData, 1, 0);
        }
        rescan(self.history_scan, resource);
        let slot = self.slot.cast::<pg_sys::BufferHeapTupleTableSlot>();
        while pg_sys::index_getnext_slot(
            self.history_scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            self.slot,
        ) {
            let buffer = (*slot).buffer;
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
            let header = (*(*slot).base.tuple).t_data;
            let inserter = pg_sys::HeapTupleHeaderGetXmin(header);
            let infomask = u32::from((*header).t_infomask);
            let lock_only = infomask & pg_sys::HEAP_XMAX_LOCK_ONLY != 0
                || infomask & (pg_sys::HEAP_XMAX_IS_MULTI | pg_sys::HEAP_LOCK_MASK)
                    == pg_sys::HEAP_XMAX_EXCL_LOCK;
            let deleter = if infomask & pg_sys::HEAP_XMAX_INVALID != 0 || lock_only {
                pg_sys::InvalidTransactionId
            } else if infomask & pg_sys::HEAP_XMAX_IS_MULTI != 0 {
                pg_sys::HeapTupleGetUpdateXid(header)
            } else {
                (*header).t_choice.t_heap.t_xmax
            };
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
            if [inserter, deleter].into_iter().any(|xid| committed_unseen(xid, snapshot)) {
                return true;
            }
        }
        false
    }
}

/// Points `scan` at the primary key's entries for `resource`.
///
/// # Safety
/// `scan` must be an open scan of the lease table's primary key.
unsafe fn rescan(scan: pg_sys::IndexScanDesc, resource: &str) {
    let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
    pg_sys::ScanKeyInit(
        &mut key,
        RESOURCE as pg_sys::AttrNumber,
        pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
        pg_sys::Oid::from(pg_sys::F_TEXTEQ),
        resource.into_datum().expect("text datum"),
    );
    // The key's datum is allocated in the current memory context, which outlives the scan's
    // use of it (until the next rescan or the end of the scan).
    pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
}

/// Whether `xid` is another transaction that committed and `snapshot` does not see.
///
/// # Safety
/// As for [`Lookup::changed_since`].
unsafe fn committed_unseen(xid: pg_sys::TransactionId, snapshot: pg_sys::Snapshot) -> bool {
    xid.into_inner() >= pg_sys::FirstNormalTransactionId.into_inner()
        && !pg_sys::TransactionIdIsCurrentTransactionId(xid)
        && pg_sys::XidInMVCCSnapshot(xid, snapshot)
        && pg_sys::TransactionIdDidCommit(xid)
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
            if !self.history_scan.is_null() {
                pg_sys::index_endscan(self.history_scan);
            }
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// Inserts new leases with their index entries, made by the executor's index insertion as an
/// INSERT makes them (partial and expression indexes included). The table, its indexes and the
/// executor state (with any index predicate, compiled once) stay open for any number of
/// inserts.
pub struct Inserter {
    heap: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    result_relation: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Inserter {
    /// Opens the table and its indexes for inserting.
    ///
    /// # Safety
    /// As for [`Lookup::open`].
    pub unsafe fn open(table: Oid) -> Option<Inserter> {
        let heap = pg_sys::table_open(table, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        // DDL that needs no lock stronger than the reader's (CREATE TRIGGER) may have committed
        // since the store checked: check again under the writer's lock.
        if !Layout::matches(heap) {
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
        Some(Inserter { heap, estate, result_relation, slot })
    }

    /// Inserts a new lease (the caller found none), its columns in the table's order (NULL as
    /// None).
    ///
    /// # Safety
    /// The caller holds the resource's barrier lock in change mode and found no row for it.
    pub unsafe fn insert(&mut self, values: &[Option<Datum>; 9]) {
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

/// Deletes the row a [`Lookup`] returned; false (nothing done) if the table no longer has
/// the layout the direct path needs.
///
/// # Safety
/// As for [`Lookup::open`]; `row` must have been found in this call, under the resource's
/// barrier lock held in change mode.
pub unsafe fn delete(table: Oid, row: &FoundRow) -> bool {
    pg_sys::PreventCommandIfReadOnly(c"DELETE".as_ptr());
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    let heap = pg_sys::table_open(table, lock);
    if !Layout::matches(heap) {
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        return false; // see Inserter::open
    }
    let mut tid = row.tid;
    pg_sys::simple_heap_delete(heap, &mut tid);
    pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
    pg_sys::CommandCounterIncrement();
    true
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn the_table_as_created_is_served_directly() {
        let table: pg_sys::Oid = Spi::get_one("SELECT 'lease.leases'::regclass::oid").unwrap().unwrap();
        // SAFETY: inside a transaction, with the lease table's OID.
        assert!(unsafe { super::Layout::check(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE) });
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
