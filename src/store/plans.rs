//! The store's statements, prepared once per backend and kept (`SPI_keepplan`), and the
//! readers of their results.
//!
//! PostgreSQL's plan cache replans a kept statement if the table is recreated or its statistics
//! change. Plans are made with sequential and bitmap scans disabled (see `Store::connect`): a
//! generic plan made while the table happened to be empty would otherwise scan the whole table
//! on every call for the rest of the backend's life, however large the table grows. Statements
//! name every object and operator with its schema, so the caller's `search_path` cannot change
//! what they do.
//!
//! Uses the column map (`row`).

use std::cell::Cell;
use std::ffi::CString;
use std::ptr::NonNull;

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

use super::row::lease_columns;

/// The statements, in the order of [`SOURCES`].
#[derive(Clone, Copy, Debug)]
pub(super) enum Statement {
    Insert,
    Current,
    TakeOver,
    Extend,
    Delete,
    Holds,
    ExpiredCandidates,
    DeleteExpired,
    NextExpiry,
    SessionBound,
    DeleteGrant,
    SessionTokensAlive,
    LeasedToOthers,
    Bind,
    Info,
}

const TEXT: Oid = pg_sys::TEXTOID;
const INT4: Oid = pg_sys::INT4OID;
const INT8: Oid = pg_sys::INT8OID;
const ROLE: Oid = pg_sys::REGROLEOID;
const TSTZ: Oid = pg_sys::TIMESTAMPTZOID;
const INT8_ARRAY: Oid = pg_sys::INT8ARRAYOID;
const TEXT_ARRAY: Oid = pg_sys::TEXTARRAYOID;

/// SQL text and parameter types of each [`Statement`].
pub(super) const SOURCES: [(&str, &[Oid]); 15] = [
    (
        "INSERT INTO lease.leases (resource, holder, token, owner, acquired_at, renewed_at, expires_at,
                                   session_pid, application_name)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (resource) DO NOTHING",
        &[TEXT, TEXT, INT8, ROLE, TSTZ, TSTZ, TSTZ, INT4, TEXT],
    ),
    (
        concat!("SELECT ", lease_columns!(), " FROM lease.leases WHERE resource OPERATOR(pg_catalog.=) $1"),
        &[TEXT],
    ),
    (
        "UPDATE lease.leases
          SET holder = $2, token = $3, owner = $4, acquired_at = $5, renewed_at = $6, expires_at = $7,
              session_pid = $8, application_name = $9
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $10",
        &[TEXT, TEXT, INT8, ROLE, TSTZ, TSTZ, TSTZ, INT4, TEXT, INT8],
    ),
    (
        concat!(
            "UPDATE lease.leases SET renewed_at = $3, expires_at = $4
              WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                AND expires_at OPERATOR(pg_catalog.>) $3
              RETURNING ",
            lease_columns!()
        ),
        &[TEXT, INT8, TSTZ, TSTZ],
    ),
    (
        concat!(
            "DELETE FROM lease.leases
              WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                AND expires_at OPERATOR(pg_catalog.>) $3
              RETURNING ",
            lease_columns!()
        ),
        &[TEXT, INT8, TSTZ],
    ),
    (
        "SELECT owner FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
            AND expires_at OPERATOR(pg_catalog.>) $3",
        &[TEXT, INT8, TSTZ],
    ),
    (
        "SELECT resource, token FROM lease.leases
          WHERE expires_at OPERATOR(pg_catalog.<=) $1 ORDER BY expires_at LIMIT $2",
        &[TSTZ, INT8],
    ),
    (
        "DELETE FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
            AND expires_at OPERATOR(pg_catalog.<=) $3
          RETURNING holder, expires_at",
        &[TEXT, INT8, TSTZ],
    ),
    ("SELECT pg_catalog.min(expires_at) FROM lease.leases", &[]),
    ("SELECT resource, token FROM lease.leases WHERE session_pid IS NOT NULL", &[]),
    (
        "DELETE FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
          RETURNING holder, expires_at",
        &[TEXT, INT8],
    ),
    (
        "SELECT token FROM lease.leases
          WHERE token OPERATOR(pg_catalog.=) ANY ($1) AND session_pid IS NOT NULL",
        &[INT8_ARRAY],
    ),
    (
        "SELECT resource FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) ANY ($1) AND expires_at OPERATOR(pg_catalog.>) $2
            AND session_pid IS NULL
            AND NOT (holder OPERATOR(pg_catalog.=) $3 AND owner OPERATOR(pg_catalog.=) $4)",
        &[TEXT_ARRAY, TSTZ, TEXT, ROLE],
    ),
    (
        "UPDATE lease.leases SET session_pid = $3, application_name = $4
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2",
        &[TEXT, INT8, INT4, TEXT],
    ),
    (
        "SELECT holder, token, owner, owner::pg_catalog.text, acquired_at, renewed_at, expires_at, session_pid,
                 application_name
          FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND expires_at OPERATOR(pg_catalog.>) $2",
        &[TEXT, TSTZ],
    ),
];

thread_local! {
    /// This backend's kept plans, prepared on first use.
    static PLANS: Cell<Option<[NonNull<pg_sys::_SPI_plan>; SOURCES.len()]>> = const { Cell::new(None) };
}

/// The kept plan for `statement`, preparing all of them on first use. The caller is connected
/// to SPI.
pub(super) fn plan(statement: Statement) -> NonNull<pg_sys::_SPI_plan> {
    let plans = PLANS.with(|cell| match cell.get() {
        Some(plans) => plans,
        None => {
            let plans = SOURCES.map(|(sql, types)| {
                let sql = CString::new(sql).expect("statement text has no NUL");
                let mut types = types.to_vec();
                // SAFETY: called inside an SPI connection with a valid NUL-terminated query and
                // an argument type array of the stated length. The kept plan lives in
                // CacheMemoryContext for the life of the backend.
                unsafe {
                    let plan = pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr());
                    let plan = NonNull::new(plan)
                        .unwrap_or_else(|| error!("could not prepare a lease store statement"));
                    pg_sys::SPI_keepplan(plan.as_ptr());
                    plan
                }
            });
            cell.set(Some(plans));
            plans
        }
    });
    plans[statement as usize]
}

/// Column `number` (1-based) of row `row` (0-based) of the last statement's result.
///
/// # Safety
/// The last SPI statement must have returned more than `row` rows, with a non-NULL column
/// `number` of a type that `T` reads.
pub(super) unsafe fn column<T: FromDatum>(row: usize, number: i32) -> T {
    nullable_column(row, number).expect("lease store column is never NULL")
}

/// As [`column`], for a column that may be NULL.
///
/// # Safety
/// As for [`column`], except that the column may be NULL.
pub(super) unsafe fn nullable_column<T: FromDatum>(row: usize, number: i32) -> Option<T> {
    let table = pg_sys::SPI_tuptable;
    let mut is_null = false;
    let datum = pg_sys::SPI_getbinval(*(*table).vals.add(row), (*table).tupdesc, number, &mut is_null);
    T::from_polymorphic_datum(datum, is_null, pg_sys::InvalidOid)
}

/// The [`super::Lease`] in row `row` of a statement whose select list is `lease_columns!()`.
///
/// # Safety
/// As for [`column`], for such a statement.
pub(super) unsafe fn lease(row: usize) -> super::Lease {
    super::Lease {
        holder: column(row, 1),
        token: column(row, 2),
        owner: column(row, 3),
        expires_at: column(row, 4),
        session_bound: column(row, 5),
    }
}

#[cfg(test)]
mod tests {
    use super::super::row::COLUMNS;
    use super::*;

    /// The INSERT lists the table's columns in order, with the types of the column map.
    #[test]
    fn insert_follows_the_column_map() {
        let (sql, types) = SOURCES[Statement::Insert as usize];
        let listed: Vec<&str> =
            sql[sql.find('(').unwrap() + 1..sql.find(')').unwrap()].split(',').map(str::trim).collect();
        let names: Vec<&str> = COLUMNS.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(listed, names);
        let column_types: Vec<Oid> = COLUMNS.iter().map(|(_, oid, _)| *oid).collect();
        assert_eq!(types, &column_types[..]);
    }

    /// The takeover sets every column but the key from the parameter of its position.
    #[test]
    fn takeover_follows_the_column_map() {
        let (sql, types) = SOURCES[Statement::TakeOver as usize];
        for (position, (name, _, _)) in COLUMNS.iter().enumerate().skip(1) {
            assert!(sql.contains(&format!("{name} = ${}", position + 1)), "{name} in {sql}");
        }
        let column_types: Vec<Oid> = COLUMNS.iter().map(|(_, oid, _)| *oid).collect();
        assert_eq!(&types[..COLUMNS.len()], &column_types[..]);
        assert_eq!(types[COLUMNS.len()], INT8);
    }
}
