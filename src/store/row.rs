//! The lease table's one column map, and the rows the store reads and writes.
//!
//! Uses vocabulary.

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;

use crate::vocabulary::Timestamp;

/// The columns of `lease.leases` in table order: name, type, NOT NULL. The one column map:
/// the direct path checks the table against it and reads and writes by these positions, and
/// the INSERT and takeover statements take their parameters in this order (a test holds the
/// statements' text to it).
pub(super) const COLUMNS: [(&str, Oid, bool); 9] = [
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

/// Attribute numbers (1-based) of the columns the direct path reads.
pub(super) const RESOURCE: usize = 1;
pub(super) const HOLDER: usize = 2;
pub(super) const TOKEN: usize = 3;
pub(super) const OWNER: usize = 4;
pub(super) const EXPIRES_AT: usize = 7;
pub(super) const SESSION_PID: usize = 8;

/// The select list of a [`Lease`], in the order [`Lease`]'s reader expects; every statement
/// that returns a lease uses it.
macro_rules! lease_columns {
    () => {
        "holder, token, owner, expires_at, session_pid IS NOT NULL"
    };
}
pub(super) use lease_columns;

/// A lease as stored: the fields a decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub token: i64,
    pub owner: Oid,
    pub expires_at: Timestamp,
    /// Bound to its holder's session (see [`crate::session`]).
    pub session_bound: bool,
}

/// A new grant, as inserted for a free resource or written over an ended lease.
pub struct NewGrant<'a> {
    pub resource: &'a str,
    pub holder: &'a str,
    pub token: i64,
    pub owner: Oid,
    /// Server time of the grant: its `acquired_at` and `renewed_at`.
    pub at: Timestamp,
    pub expires_at: Timestamp,
    pub binding: Option<Binding<'a>>,
}

impl NewGrant<'_> {
    /// The row's values in table order ([`COLUMNS`]), NULL as None.
    pub(super) fn values(&self) -> [Option<Datum>; COLUMNS.len()] {
        [
            self.resource.into_datum(),
            self.holder.into_datum(),
            self.token.into_datum(),
            self.owner.into_datum(),
            self.at.into_datum(),
            self.at.into_datum(),
            self.expires_at.into_datum(),
            self.binding.map(|binding| binding.pid).into_datum(),
            self.binding.map(|binding| binding.application_name).into_datum(),
        ]
    }
}

/// The session a session-bound lease is bound to, as shown to administrators.
#[derive(Clone, Copy)]
pub struct Binding<'a> {
    pub pid: i32,
    pub application_name: &'a str,
}

/// A live lease as `lease_info` shows it.
pub struct LeaseInfo {
    pub holder: String,
    pub token: i64,
    pub owner: Oid,
    pub owner_name: String,
    pub acquired_at: pgrx::datum::TimestampWithTimeZone,
    pub renewed_at: pgrx::datum::TimestampWithTimeZone,
    pub expires_at: pgrx::datum::TimestampWithTimeZone,
    pub session_pid: Option<i32>,
    pub application_name: Option<String>,
}
