//! The lease table's one column map, its shapes, and the rows the store reads and writes.
//!
//! Uses vocabulary and barrier (the kind lock of a mode).

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::barrier::Kind;
use crate::vocabulary::Timestamp;

/// The columns of `lease.leases` in table order: name, type, NOT NULL. The one column map:
/// the direct path checks the table against it and reads and writes by these positions, and
/// the INSERT and takeover statements are written from it.
pub(super) const COLUMNS: [(&str, Oid, bool); 14] = [
    ("resource", pg_sys::TEXTOID, true),
    ("holder", pg_sys::TEXTOID, true),
    ("token", pg_sys::INT8OID, true),
    ("owner", pg_sys::REGROLEOID, true),
    ("acquired_at", pg_sys::TIMESTAMPTZOID, true),
    ("renewed_at", pg_sys::TIMESTAMPTZOID, true),
    ("expires_at", pg_sys::TIMESTAMPTZOID, true),
    ("session_pid", pg_sys::INT4OID, false),
    ("application_name", pg_sys::TEXTOID, false),
    // Since 0.5.0.
    ("lifeline", pg_sys::INT8OID, false),
    ("data", pg_sys::JSONBOID, false),
    ("released_at", pg_sys::TIMESTAMPTZOID, false),
    // Since 0.6.0.
    ("slot", pg_sys::INT4OID, true),
    ("mode", pg_sys::TEXTOID, true),
];

/// The columns of `lease.lifelines` (0.5.0 on) in table order, as [`COLUMNS`] lists those of
/// `lease.leases`.
pub(super) const LIFELINE_COLUMNS: [(&str, Oid, bool); 9] = [
    ("id", pg_sys::INT8OID, true),
    ("name", pg_sys::TEXTOID, true),
    ("owner", pg_sys::REGROLEOID, true),
    ("ttl", pg_sys::INTERVALOID, true),
    ("opened_at", pg_sys::TIMESTAMPTZOID, true),
    ("renewed_at", pg_sys::TIMESTAMPTZOID, true),
    ("expires_at", pg_sys::TIMESTAMPTZOID, true),
    ("session_pid", pg_sys::INT4OID, false),
    ("application_name", pg_sys::TEXTOID, false),
];

/// Which version of the table the database has: the library serves a database whose extension
/// has not been updated yet (`ALTER EXTENSION lease UPDATE`) with the statements of its shape,
/// and what needs the newer columns is refused there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// 0.1.0 to 0.4.0: the first nine columns.
    Classic = 0,
    /// 0.5.0: lifelines, data and minimum holds.
    Lifelines = 1,
    /// 0.6.0: several rows per resource (shared leases and permits), keyed by (resource, slot).
    Slotted = 2,
}

impl Shape {
    /// The columns a table of this shape has, in order.
    pub(super) fn columns(self) -> &'static [(&'static str, Oid, bool)] {
        match self {
            Shape::Classic => &COLUMNS[..9],
            Shape::Lifelines => &COLUMNS[..12],
            Shape::Slotted => &COLUMNS,
        }
    }

    /// Whether the table has the columns of 0.5.0 (lifelines, data, minimum holds).
    pub fn has_lifelines(self) -> bool {
        self >= Shape::Lifelines
    }
}

impl PartialOrd for Shape {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Shape {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// How a lease holds its resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseMode {
    /// The one holder: row slot 0.
    Exclusive,
    /// One of any number of shared holders, none exclusive: row slots 1 and up.
    Shared,
    /// One of at most the resource's capacity of permits: row slots 1 to the capacity.
    Permit,
}

impl LeaseMode {
    /// Its name, in the table, the SQL API and events.
    pub fn name(self) -> &'static str {
        match self {
            LeaseMode::Exclusive => "exclusive",
            LeaseMode::Shared => "shared",
            LeaseMode::Permit => "permit",
        }
    }

    /// The mode named `name` (as stored).
    pub fn named(name: &str) -> Option<LeaseMode> {
        [LeaseMode::Exclusive, LeaseMode::Shared, LeaseMode::Permit]
            .into_iter()
            .find(|mode| mode.name() == name)
    }

    /// The kind lock mode its grants and removals take (None for an exclusive lease, which has
    /// the resource's lock).
    pub fn kind(self) -> Option<Kind> {
        match self {
            LeaseMode::Exclusive => None,
            LeaseMode::Shared => Some(Kind::Shared),
            LeaseMode::Permit => Some(Kind::Permit),
        }
    }
}

/// A row found by a scan over many leases (the sweeps, a lifeline's leases): where it is and how
/// it holds, which decides its locks.
pub struct Listed {
    pub resource: String,
    pub token: i64,
    pub slot: i32,
    pub mode: LeaseMode,
}

/// Attribute numbers (1-based) of the columns the direct path reads.
pub(super) const RESOURCE: usize = 1;
pub(super) const HOLDER: usize = 2;
pub(super) const TOKEN: usize = 3;
pub(super) const OWNER: usize = 4;
pub(super) const ACQUIRED_AT: usize = 5;
pub(super) const EXPIRES_AT: usize = 7;
pub(super) const SESSION_PID: usize = 8;
pub(super) const LIFELINE: usize = 10;
pub(super) const DATA: usize = 11;
pub(super) const RELEASED_AT: usize = 12;
pub(super) const SLOT: usize = 13;
pub(super) const MODE: usize = 14;

/// A lease as stored: the fields a decision needs, and its data.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub token: i64,
    pub owner: Oid,
    pub acquired_at: Timestamp,
    /// When the lease ends: its own expiry, or for a lease attached to a lifeline, the
    /// lifeline's (the beginning of time when the lifeline is gone).
    pub expires_at: Timestamp,
    /// Bound to its holder's session (see [`crate::session`]).
    pub session_bound: bool,
    /// The lifeline it is attached to, and what the store found of it.
    pub lifeline: Option<Attachment>,
    /// Released with a minimum hold: nobody holds it, nobody may take it until `expires_at`.
    pub released: bool,
    /// Its data, read only while `lease.notify_data` is on (events are all that use it).
    pub data: Option<serde_json::Value>,
    /// Its row's slot: 0 for an exclusive lease, 1 and up for shared leases and permits.
    pub slot: i32,
    pub mode: LeaseMode,
    /// For a permit: its resource's capacity (as declared when the row was read).
    pub capacity: Option<i32>,
}

/// A lease's lifeline as found when the lease was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The lifeline's id (a number of the token sequence: ids and tokens never meet).
    pub id: i64,
    /// Whether the lifeline is bound to a database session, whose session lock its id keys.
    pub session_bound: bool,
}

impl Lease {
    /// Whether `token` holds this lease at `now`, as far as the row tells (a lifeline bound to
    /// a session that ended is the caller's to ask about).
    pub fn held_by(&self, token: i64, now: Timestamp) -> bool {
        self.token == token && !self.released && self.expires_at > now
    }
}

/// A new grant, as inserted for a free resource or written over an ended lease.
pub struct NewGrant<'a> {
    pub resource: &'a str,
    pub holder: &'a str,
    pub token: i64,
    pub owner: Oid,
    /// Server time of the grant: its `acquired_at` and `renewed_at`.
    pub at: Timestamp,
    /// Its own expiry; for a lease attached to a lifeline, the end of time.
    pub expires_at: Timestamp,
    pub binding: Option<Binding<'a>>,
    pub lifeline: Option<i64>,
    pub data: Option<&'a serde_json::Value>,
    pub slot: i32,
    pub mode: LeaseMode,
    pub capacity: Option<i32>,
}

impl NewGrant<'_> {
    /// The lease this grant makes, as its events describe it.
    pub fn lease(&self) -> Lease {
        Lease {
            holder: self.holder.to_owned(),
            token: self.token,
            owner: self.owner,
            acquired_at: self.at,
            expires_at: self.expires_at,
            session_bound: self.binding.is_some(),
            lifeline: self.lifeline.map(|id| Attachment { id, session_bound: false }),
            released: false,
            data: self.data.cloned(),
            slot: self.slot,
            mode: self.mode,
            capacity: self.capacity,
        }
    }

    /// The row's values in table order ([`COLUMNS`]) for a table of `shape`, NULL as None.
    pub(super) fn values(&self, shape: Shape) -> Vec<Option<Datum>> {
        let mut values = vec![
            self.resource.into_datum(),
            self.holder.into_datum(),
            self.token.into_datum(),
            self.owner.into_datum(),
            self.at.into_datum(),
            self.at.into_datum(),
            self.expires_at.into_datum(),
            self.binding.map(|binding| binding.pid).into_datum(),
            self.binding.map(|binding| binding.application_name).into_datum(),
        ];
        if shape.has_lifelines() {
            values.push(self.lifeline.into_datum());
            values.push(self.data.and_then(|data| JsonB(data.clone()).into_datum()));
            values.push(None);
        }
        if shape == Shape::Slotted {
            values.push(self.slot.into_datum());
            values.push(self.mode.name().into_datum());
        }
        values
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
    pub lifeline: Option<i64>,
    pub data: Option<JsonB>,
    pub released_at: Option<pgrx::datum::TimestampWithTimeZone>,
    pub mode: String,
    pub capacity: Option<i32>,
}
