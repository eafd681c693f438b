//! Reading the results of the store's statements (`plans`).
//!
//! Uses the row types (`row`) and settings.

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::row::{Attachment, Lease, LeaseMode, Shape};
use crate::settings;

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

/// The [`Lease`] in row `row` of a statement whose select list is [`lease_columns`] of
/// `shape`. For a lease attached to a lifeline, `expires_at` is the row's (the end of time):
/// the store puts the lifeline's in its place.
///
/// # Safety
/// As for [`column`], for such a statement.
pub(super) unsafe fn lease(row: usize, shape: Shape) -> Lease {
    let current = shape.has_lifelines();
    let slotted = shape == Shape::Slotted;
    Lease {
        holder: column(row, 1),
        token: column(row, 2),
        owner: column(row, 3),
        acquired_at: column(row, 4),
        expires_at: column(row, 5),
        session_bound: column(row, 6),
        lifeline: if current {
            nullable_column::<i64>(row, 7).map(|id| Attachment { id, session_bound: false })
        } else {
            None
        },
        // Only events carry a lease's data: it is converted only when they will.
        data: match current && settings::notify_data() {
            true => nullable_column::<pgrx::JsonB>(row, 8).map(|data| data.0),
            false => None,
        },
        released: current && column::<bool>(row, 9),
        slot: if slotted { column(row, 10) } else { 0 },
        mode: match slotted {
            true => LeaseMode::named(&column::<String>(row, 11)).unwrap_or(LeaseMode::Exclusive),
            false => LeaseMode::Exclusive,
        },
        capacity: None,
    }
}
