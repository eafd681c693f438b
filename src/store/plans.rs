//! The store's statements ([`super::statements`]), prepared once per backend and shape and kept
//! (`SPI_keepplan`).
//!
//! PostgreSQL's plan cache replans a kept statement if the table is recreated or its statistics
//! change. Plans are made with sequential and bitmap scans disabled (see `Store::connect`): a
//! generic plan made while the table happened to be empty would otherwise scan the whole table
//! on every call for the rest of the backend's life, however large the table grows.
//!
//! Uses the statements' text and the shapes (`row`).

use std::cell::RefCell;
use std::ffi::CString;
use std::ptr::NonNull;

use pgrx::pg_sys;
use pgrx::prelude::*;

pub(super) use super::results::{column, lease, nullable_column};
use super::row::Shape;
pub(super) use super::statements::Statement;
use super::statements::{source, SHAPES, STATEMENTS};

thread_local! {
    /// This backend's kept plans, per shape, each prepared on first use.
    static PLANS: RefCell<[[Option<NonNull<pg_sys::_SPI_plan>>; STATEMENTS]; SHAPES]> =
        const { RefCell::new([[None; STATEMENTS]; SHAPES]) };
}

/// The kept plan for `statement` on a table of `shape`, prepared on first use. The caller is
/// connected to SPI.
pub(super) fn plan(statement: Statement, shape: Shape) -> NonNull<pg_sys::_SPI_plan> {
    if let Some(plan) = PLANS.with(|plans| plans.borrow()[shape as usize][statement as usize]) {
        return plan;
    }
    let Some((sql, mut types)) = source(statement, shape) else {
        error!("this lease call needs the extension's newer objects; run ALTER EXTENSION lease UPDATE")
    };
    let sql = CString::new(sql).expect("statement text has no NUL");
    // SAFETY: called inside an SPI connection with a valid NUL-terminated query and an argument
    // type array of the stated length. The kept plan lives in CacheMemoryContext for the life
    // of the backend.
    let plan = unsafe {
        let plan = pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr());
        let plan = NonNull::new(plan).unwrap_or_else(|| error!("could not prepare a lease store statement"));
        pg_sys::SPI_keepplan(plan.as_ptr());
        plan
    };
    PLANS.with(|plans| plans.borrow_mut()[shape as usize][statement as usize] = Some(plan));
    plan
}

#[cfg(test)]
mod tests {
    use super::super::row::{Shape, COLUMNS};
    use super::super::statements::{source, Statement};
    use pgrx::pg_sys;
    const JSONB: pg_sys::Oid = pg_sys::JSONBOID;

    /// The INSERT and the takeover are written from the column map, for each shape; the
    /// statements the classic shape lacks are refused for it.
    #[test]
    fn statements_follow_the_column_map() {
        let (insert, types) = source(Statement::Insert, Shape::Classic).unwrap();
        assert!(insert.contains("(resource, holder, token, owner, acquired_at, renewed_at, expires_at, session_pid, application_name)"), "{insert}");
        assert_eq!(types.len(), 9);
        let (insert, types) = source(Statement::Insert, Shape::Lifelines).unwrap();
        assert!(insert.contains("application_name, lifeline, data, released_at) VALUES ($1, "), "{insert}");
        assert!(insert.ends_with("ON CONFLICT (resource) DO NOTHING"), "{insert}");
        assert_eq!(types[10], JSONB);
        let (insert, types) = source(Statement::Insert, Shape::Slotted).unwrap();
        assert!(insert.contains("released_at, slot, mode) VALUES ($1, "), "{insert}");
        assert!(insert.ends_with("ON CONFLICT (resource, slot) DO NOTHING"), "{insert}");
        assert_eq!(types.len(), 14);
        let (take_over, types) = source(Statement::TakeOver, Shape::Slotted).unwrap();
        for (position, (name, _, _)) in COLUMNS.iter().enumerate().skip(1) {
            assert!(take_over.contains(&format!("{name} = ${}", position + 1)), "{name} in {take_over}");
        }
        assert_eq!(types.len(), COLUMNS.len() + 1);
        assert!(take_over.ends_with("token OPERATOR(pg_catalog.=) $15"), "{take_over}");
        assert!(source(Statement::Keep, Shape::Classic).is_none());
        assert!(source(Statement::CapacityGet, Shape::Lifelines).is_none());
        assert!(!source(Statement::Delete, Shape::Classic).unwrap().0.contains("released_at"));
    }
}
