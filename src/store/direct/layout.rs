//! The shape of `lease.leases` that the direct path is equivalent to SQL on.
//!
//! Uses the column map (`row`).
//!
//! The verdict for the relation last found to match is kept (per backend) until the relation
//! cache invalidates that relation or every relation (the catalog's callback tells it): all DDL
//! that could make the direct path differ from SQL (columns and their types, keys and indexes,
//! triggers, row-level security and policies, CHECK constraints, rules, inheritance children)
//! sends that invalidation, and a backend takes it in when it locks the relation, before it asks
//! again, exactly when it would otherwise have read the changed relation cache entry.

use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::pg_sys::{self, Oid};

use crate::store::row::{Shape, RESOURCE, SLOT};

/// The relation and shape last found to match, packed by [`verdict_key`] (0: none); with
/// [`CHECKING`] set while a check of it is under way, so that an invalidation arriving during
/// the check keeps its result from being kept.
static MATCHED: AtomicU64 = AtomicU64::new(0);
const CHECKING: u64 = 1 << 63;

fn verdict_key(relation: Oid, shape: Shape) -> u64 {
    (u64::from(relation.to_u32()) << 8) | (shape as u64 + 1)
}

/// The shape of `lease.leases` that the direct path is equivalent to SQL on.
pub(in crate::store) struct Layout;

impl Layout {
    /// Forgets the kept verdict when its relation (or every relation: `InvalidOid`) is
    /// invalidated. Called by the catalog's relation cache callback (`store::catalog`), which is
    /// registered before any table OID, and so any relation checked here, is known.
    pub fn forget(relation: Oid) {
        let matched = MATCHED.load(Ordering::Relaxed);
        if relation == pg_sys::InvalidOid || ((matched & !CHECKING) >> 8) as u32 == relation.to_u32() {
            MATCHED.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the open relation `relation` is the table as created, in `shape`: a plain heap
    /// table with exactly the expected columns (names, types, NOT NULL, no identity or generated column,
    /// the resource's collation) and its primary key on `resource`, and nothing a direct write
    /// would bypass: no trigger (a foreign key
    /// referencing the table is one), no row-level security, no CHECK constraint, no rule, no
    /// inheritance child. Its other indexes (partial, on expressions) are maintained by the
    /// executor's own index insertion, see [`super::Inserter`]. Checked on the relation actually
    /// opened, under its lock, so that concurrent DDL is seen.
    ///
    /// # Safety
    /// `relation` must be open (and locked) in the current transaction.
    pub unsafe fn matches(relation: pg_sys::Relation, shape: Shape) -> bool {
        let key = verdict_key((*relation).rd_id, shape);
        if MATCHED.load(Ordering::Relaxed) == key {
            return true;
        }
        MATCHED.store(key | CHECKING, Ordering::Relaxed);
        let matches = Layout::compare(relation, shape);
        // Kept only if no invalidation came in meanwhile (it cleared the word).
        let kept = if matches { key } else { 0 };
        let _ = MATCHED.compare_exchange(key | CHECKING, kept, Ordering::Relaxed, Ordering::Relaxed);
        matches
    }

    /// [`Layout::matches`] without the kept verdict: reads the relation cache entry.
    ///
    /// # Safety
    /// As for [`Layout::matches`].
    unsafe fn compare(relation: pg_sys::Relation, shape: Shape) -> bool {
        let form = &*(*relation).rd_rel;
        let descriptor = (*relation).rd_att;
        if form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || form.relam != pg_sys::HEAP_TABLE_AM_OID
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
        let columns = shape.columns();
        let columns_match = attributes.len() == columns.len()
            && attributes.iter().zip(columns).all(|(attribute, &(name, type_oid, not_null))| {
                !attribute.attisdropped
                    && attribute.atttypid == type_oid
                    && attribute.attnotnull == not_null
                    // No type modifier (a `timestamptz(0)` column would round what SQL stores).
                    && attribute.atttypmod == -1
                    && attribute.attgenerated == 0
                    && attribute.attidentity == 0
                    && std::ffi::CStr::from_ptr(attribute.attname.data.as_ptr()).to_bytes() == name.as_bytes()
            })
            && attributes[RESOURCE - 1].attcollation == pg_sys::C_COLLATION_OID;
        columns_match && primary_key_matches(relation, shape)
    }

    /// Opens `table` with `lock` (which also takes in the invalidations of concurrent DDL that
    /// committed) and says whether it [`Layout::matches`]; the lock is kept until the
    /// transaction ends, as a statement keeps it.
    ///
    /// # Safety
    /// Must run in a transaction; `table` must be a table OID.
    pub unsafe fn check(table: Oid, shape: Shape, lock: pg_sys::LOCKMODE) -> bool {
        let relation = pg_sys::table_open(table, lock);
        let matches = Layout::matches(relation, shape);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        matches
    }
}

/// Whether the table's primary key is the one lookups scan: on `resource` alone, or for the
/// slotted shape on (`resource`, `slot`) in that order (lookups scan its first column).
///
/// # Safety
/// `relation` must be open (and locked) in the current transaction.
unsafe fn primary_key_matches(relation: pg_sys::Relation, shape: Shape) -> bool {
    let expected: &[usize] = if shape == Shape::Slotted { &[RESOURCE, SLOT] } else { &[RESOURCE] };
    let index = pg_sys::RelationGetPrimaryKeyIndex(relation);
    if index == pg_sys::InvalidOid {
        return false;
    }
    // The relation cache keeps the index's entry; it is only pinned here.
    let index = pg_sys::RelationIdGetRelation(index);
    if index.is_null() {
        return false;
    }
    let form = &*(*index).rd_index;
    let keys = form.indkey.values.as_slice(form.indnkeyatts as usize);
    let matches = form.indnatts == form.indnkeyatts
        && keys.len() == expected.len()
        && keys.iter().zip(expected).all(|(&key, &column)| key as usize == column);
    pg_sys::RelationClose(index);
    matches
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::store::row::Shape;

    #[pg_test]
    fn the_table_as_created_is_served_directly() {
        let table: pg_sys::Oid = Spi::get_one("SELECT 'lease.leases'::regclass::oid").unwrap().unwrap();
        // SAFETY: inside a transaction, with the lease table's OID.
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        // SAFETY: as above.
        assert!(unsafe { super::Layout::check(table, Shape::Slotted, lock) });
        // SAFETY: as above.
        assert!(!unsafe { super::Layout::check(table, Shape::Lifelines, lock) });
        // SAFETY: as above.
        assert!(!unsafe { super::Layout::check(table, Shape::Classic, lock) });
    }

    #[pg_test]
    fn a_column_with_a_type_modifier_is_not_served_directly() {
        // Copies of the table as created: one as it is, one whose acquired_at rounds to the
        // second (an INSERT statement rounds; a tuple formed directly would not).
        // As every caller does first: the catalog registers the invalidation callback.
        crate::store::catalog::lease_table();
        Spi::run("CREATE TABLE public.t_layout_plain (LIKE lease.leases INCLUDING ALL)").unwrap();
        Spi::run("CREATE TABLE public.t_layout_typmod (LIKE lease.leases INCLUDING ALL)").unwrap();
        Spi::run("ALTER TABLE public.t_layout_typmod ALTER COLUMN acquired_at TYPE timestamptz(0)").unwrap();
        let oid = |name: &str| -> pg_sys::Oid {
            Spi::get_one(&format!("SELECT '{name}'::regclass::oid")).unwrap().unwrap()
        };
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        // SAFETY: inside a transaction, with table OIDs.
        assert!(!unsafe { super::Layout::check(oid("public.t_layout_typmod"), Shape::Slotted, lock) });
        // SAFETY: as above.
        assert!(unsafe { super::Layout::check(oid("public.t_layout_plain"), Shape::Slotted, lock) });
        // The verdict kept for the plain copy is forgotten when that copy changes the same way.
        Spi::run("ALTER TABLE public.t_layout_plain ALTER COLUMN acquired_at TYPE timestamptz(0)").unwrap();
        // SAFETY: as above.
        assert!(!unsafe { super::Layout::check(oid("public.t_layout_plain"), Shape::Slotted, lock) });
    }
}
