//! Reading leases by resource through the primary key, and the history of a resource's rows.
//!
//! Uses the column map (`row`) and settings.

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

use crate::settings;

use crate::store::row::{
    Attachment, Lease, LeaseMode, Shape, ACQUIRED_AT, DATA, EXPIRES_AT, HOLDER, LIFELINE, MODE, OWNER,
    RELEASED_AT, RESOURCE, SESSION_PID, SLOT, TOKEN,
};

/// A lease as found, with where its row is.
pub(in crate::store) struct Found {
    pub tid: pg_sys::ItemPointerData,
    pub lease: Lease,
}

/// Reads leases by resource through the primary key, seeing what has committed by the time
/// each row is read, and this transaction's own changes ([`pg_sys::SnapshotSelfData`]). Under
/// the resource's barrier lock that is the state every other writer of the resource left: a
/// writer's lock is released only after its commit (or abort) is visible. No snapshot is built
/// for it (a pass over the process array under its lock, on every call). One lookup serves any
/// number of reads.
pub(in crate::store) struct Lookup {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    /// A scan of every version of a row ([`Lookup::changed_since`]), begun on first use.
    history_scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
    shape: Shape,
}

impl Lookup {
    /// Opens the table and its primary key for reading.
    ///
    /// # Safety
    /// `table` and `primary_key` must be the lease table and its primary key; [`Lookup::get`]
    /// also needs the columns that [`super::Layout::check`] checks.
    pub unsafe fn open(table: Oid, primary_key: Oid, shape: Shape) -> Lookup {
        // Locks on the table and index are kept until the transaction ends, as a statement's are.
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(table, lock);
        let index = pg_sys::index_open(primary_key, lock);
        let scan = pg_sys::index_beginscan(heap, index, &raw mut pg_sys::SnapshotSelfData, 1, 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        Lookup { heap, index, scan, history_scan: std::ptr::null_mut(), slot, shape }
    }

    /// Every row of `resource` (one per slot, in slot order), expired or not. Exact when the
    /// caller holds the resource's barrier lock; otherwise a hint that may be outdated by the
    /// time it is used.
    pub fn all(&mut self, resource: &str) -> Vec<Found> {
        let mut found = Vec::new();
        // SAFETY: the scan and slot belong to this open lookup, on the lease table's primary
        // key; the table's columns were checked.
        unsafe {
            rescan(self.scan, resource);
            while pg_sys::index_getnext_slot(
                self.scan,
                pg_sys::ScanDirection::ForwardScanDirection,
                self.slot,
            ) {
                found.push(self.read());
            }
        }
        found
    }

    /// The row in the lookup's slot.
    ///
    /// # Safety
    /// The slot holds a row of the lease table just returned by the scan.
    unsafe fn read(&self) -> Found {
        let slot = self.slot;
        let current = self.shape.has_lifelines();
        let slotted = self.shape == Shape::Slotted;
        let last = match self.shape {
            Shape::Classic => SESSION_PID,
            Shape::Lifelines => RELEASED_AT,
            Shape::Slotted => MODE,
        };
        pg_sys::slot_getsomeattrs_int(slot, last as i32);
        let values = std::slice::from_raw_parts((*slot).tts_values, last);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, last);
        let column = |number: usize| (values[number - 1], nulls[number - 1]);
        let read = |number: usize, name: &str| -> i64 {
            let (datum, null) = column(number);
            i64::from_datum(datum, null).unwrap_or_else(|| panic!("{name} is not null"))
        };
        let (holder, holder_null) = column(HOLDER);
        let (owner, owner_null) = column(OWNER);
        // Only events carry a lease's data: it is converted only when they will.
        let (data, data_null) = match current && settings::notify_data() {
            true => column(DATA),
            false => (pg_sys::Datum::from(0), true),
        };
        let lifeline =
            if current { i64::from_datum(values[LIFELINE - 1], nulls[LIFELINE - 1]) } else { None };
        let mode = match slotted {
            true => {
                let (mode, mode_null) = column(MODE);
                let mode = <&str>::from_datum(mode, mode_null).expect("mode is not null");
                LeaseMode::named(mode).unwrap_or(LeaseMode::Exclusive)
            }
            false => LeaseMode::Exclusive,
        };
        Found {
            tid: (*slot).tts_tid,
            lease: Lease {
                holder: String::from_datum(holder, holder_null).expect("holder is not null"),
                token: read(TOKEN, "token"),
                owner: Oid::from_datum(owner, owner_null).expect("owner is not null"),
                acquired_at: read(ACQUIRED_AT, "acquired_at"),
                expires_at: read(EXPIRES_AT, "expires_at"),
                session_bound: !nulls[SESSION_PID - 1],
                lifeline: lifeline.map(|id| Attachment { id, session_bound: false }),
                data: pgrx::JsonB::from_datum(data, data_null).map(|data| data.0),
                released: current && !nulls[RELEASED_AT - 1],
                slot: if slotted {
                    i32::from_datum(values[SLOT - 1], nulls[SLOT - 1]).expect("slot is not null")
                } else {
                    0
                },
                mode,
                capacity: None,
            },
        }
    }

    /// Whether the lease on `resource` (its row at `slot`, or any of its rows) changed after
    /// `snapshot` was taken: whether any version of such a row, live or dead, was inserted or deleted by another transaction that committed
    /// without `snapshot` seeing it. Exact when the caller holds the resource's barrier lock:
    /// no other writer is then in progress, and no version a snapshot of this backend cannot
    /// see yet has been pruned away. Changes made by this transaction do not count.
    ///
    /// # Safety
    /// `snapshot` must be a valid MVCC snapshot (the statement's), registered or active.
    pub unsafe fn changed_since(
        &mut self,
        resource: &str,
        slot: Option<i32>,
        snapshot: pg_sys::Snapshot,
    ) -> bool {
        if self.history_scan.is_null() {
            self.history_scan =
                pg_sys::index_beginscan(self.heap, self.index, &raw mut pg_sys::SnapshotAnyData, 1, 0);
        }
        rescan(self.history_scan, resource);
        let slot_asked = slot;
        let slot = self.slot.cast::<pg_sys::BufferHeapTupleTableSlot>();
        while pg_sys::index_getnext_slot(
            self.history_scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            self.slot,
        ) {
            // Another row of the resource (a shared lease's or a permit's) does not count when
            // one row is asked about.
            if let (Some(asked), Shape::Slotted) = (slot_asked, self.shape) {
                let mut null = false;
                let found = pg_sys::slot_getattr(self.slot, SLOT as i32, &mut null);
                if i32::from_datum(found, null) != Some(asked) {
                    continue;
                }
            }
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
