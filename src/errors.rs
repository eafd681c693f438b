//! Every error a caller of `lease` can see, each with its SQLSTATE.
//!
//! Messages are lower case without a trailing period; hints are full sentences. Nothing is
//! written before an argument is validated, and an error raised later aborts the transaction,
//! so a rejected call changes nothing.
//!
//! Uses nothing of the crate.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// A failed lease call. `raise` reports it to PostgreSQL with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// A required argument was NULL (22004).
    NullArgument(&'static str),
    /// An argument is out of its documented range (22023); the message names it and says why.
    InvalidArgument(String),
    /// The server is a hot standby: leases can only be granted on the primary (25006).
    ReadOnlyServer,
    /// A feature that needs the library in `shared_preload_libraries` (55000).
    NeedsPreload(&'static str),
    /// The caller is not a member of the role that holds the lease (42501).
    NotLeaseOwner { resource: String, owner: String },
    /// `lease_assert` found that the token does not hold the lease (55000).
    NotHeld { resource: String, token: i64 },
    /// A waiting acquire ran past `lock_timeout` (55P03).
    LockTimeout { resource: String },
    /// `lease_fence` rejected a row change whose token does not hold its resource (55000).
    Unfenced { table: String, resource: Option<String>, token: Option<i64> },
    /// `lease_fence` rejected a DELETE, or an UPDATE that states no token, because the writing
    /// transaction has not proved that it holds the row's lease (55000).
    Unproven { table: String, resource: Option<String> },
    /// `lease_fence` was fired in a way it cannot fence (09000).
    TriggerMisuse(String),
    /// A trigger argument names a column the table does not have (42703).
    UndefinedColumn { table: String, column: String },
    /// A trigger argument names a column of the wrong type (42804).
    ColumnType { column: String, expected: &'static str },
    /// A write decided under REPEATABLE READ or SERIALIZABLE on a lease that changed since the
    /// transaction's snapshot (40001).
    SerializationFailure { resource: String },
    /// A re-acquire asked to bind a lease that another live session holds bound (55006).
    BoundElsewhere { resource: String },
    /// What needs the objects of a newer version of the extension than the database has
    /// (55000): what, and the version.
    NeedsUpdate(&'static str, &'static str),
    /// The lifeline does not exist, was closed, or lapsed (55000).
    LifelineLapsed { id: i64 },
    /// The caller is not a member of the role that opened the lifeline (42501).
    NotLifelineOwner { id: i64, owner: String },
    /// A permit asked for without a capacity, of a resource whose capacity is not declared
    /// (55000).
    NoCapacity { resource: String },
    /// A waiting `lease_acquire_all` names more resources than a waiter can queue for (54000).
    TooManyToWait { count: usize, limit: usize },
}

pub type LeaseResult<T> = Result<T, LeaseError>;

impl LeaseError {
    /// 22023 with the message "`argument` `reason`", e.g. "ttl must be greater than zero".
    pub fn invalid(argument: &str, reason: impl std::fmt::Display) -> Self {
        LeaseError::InvalidArgument(format!("{argument} {reason}"))
    }

    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            LeaseError::NullArgument(_) => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            LeaseError::InvalidArgument(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            LeaseError::ReadOnlyServer => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            LeaseError::NeedsPreload(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            LeaseError::NotLeaseOwner { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            LeaseError::NotHeld { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            LeaseError::LockTimeout { .. } => ERRCODE_LOCK_NOT_AVAILABLE,
            LeaseError::Unfenced { .. } | LeaseError::Unproven { .. } => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            LeaseError::TriggerMisuse(_) => ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            LeaseError::UndefinedColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            LeaseError::ColumnType { .. } => ERRCODE_DATATYPE_MISMATCH,
            LeaseError::SerializationFailure { .. } => ERRCODE_T_R_SERIALIZATION_FAILURE,
            LeaseError::BoundElsewhere { .. } => ERRCODE_OBJECT_IN_USE,
            LeaseError::LifelineLapsed { .. } | LeaseError::NeedsUpdate(..) => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            LeaseError::NotLifelineOwner { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            LeaseError::TooManyToWait { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            LeaseError::NoCapacity { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }

    fn message(&self) -> String {
        match self {
            LeaseError::NullArgument(argument) => format!("{argument} must not be null"),
            LeaseError::InvalidArgument(message) => message.clone(),
            LeaseError::ReadOnlyServer => {
                "cannot acquire, renew, release or check leases during recovery".into()
            }
            LeaseError::NeedsPreload(what) => format!("{what} requires lease in shared_preload_libraries"),
            LeaseError::NotLeaseOwner { resource, owner } => {
                format!("permission denied for lease on resource \"{resource}\" held by role \"{owner}\"")
            }
            LeaseError::NotHeld { resource, token } => {
                format!("lease on resource \"{resource}\" is not held with token {token}")
            }
            LeaseError::LockTimeout { resource } => {
                format!("canceling wait for lease on resource \"{resource}\" due to lock timeout")
            }
            LeaseError::Unfenced { table, resource, token } => {
                let resource = resource.as_ref().map_or("NULL".into(), |name| format!("\"{name}\""));
                let token = token.map_or("NULL".into(), |token| token.to_string());
                format!("row change on table \"{table}\" rejected: lease on resource {resource} is not held with token {token}")
            }
            LeaseError::Unproven { table, resource } => {
                let resource = resource.as_ref().map_or("NULL".into(), |name| format!("\"{name}\""));
                format!("row change on table \"{table}\" rejected: this transaction has not shown that it holds the lease on resource {resource}")
            }
            LeaseError::TriggerMisuse(message) => message.clone(),
            LeaseError::UndefinedColumn { table, column } => {
                format!("lease_fence: column \"{column}\" of table \"{table}\" does not exist")
            }
            LeaseError::ColumnType { column, expected } => {
                format!("lease_fence: token column \"{column}\" must be of type {expected}")
            }
            LeaseError::SerializationFailure { resource } => format!(
                "could not serialize access to lease on resource \"{resource}\" due to a concurrent change"
            ),
            LeaseError::BoundElsewhere { resource } => {
                format!("lease on resource \"{resource}\" is bound to another session")
            }
            LeaseError::NeedsUpdate(what, version) => {
                format!("{what} need the lease extension's version {version} objects")
            }
            LeaseError::LifelineLapsed { id } => {
                format!("lifeline {id} has lapsed, was closed, or never existed")
            }
            LeaseError::NotLifelineOwner { id, owner } => {
                format!("permission denied for lifeline {id} opened by role \"{owner}\"")
            }
            LeaseError::NoCapacity { resource } => {
                format!("resource \"{resource}\" has no declared capacity")
            }
            LeaseError::TooManyToWait { count, limit } => {
                format!("lease_acquire_all can wait for at most {limit} resources, not {count}")
            }
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            LeaseError::ReadOnlyServer => Some(
                "Leases are granted, renewed and checked on the primary server; connect to the primary.",
            ),
            LeaseError::NotLeaseOwner { .. } => {
                Some("Only members of the role that acquired a lease may renew, release or fence it.")
            }
            LeaseError::NotHeld { .. } | LeaseError::Unfenced { .. } => Some(
                "The lease has expired, was released, or was taken over by another holder; stop the protected work.",
            ),
            LeaseError::Unproven { .. } => Some(
                "Fence the resource with lease_assert (or lease_check) in the same transaction before the change, or set the token column to your token.",
            ),
            LeaseError::NeedsPreload(_) => {
                Some("Add lease to shared_preload_libraries in postgresql.conf and restart the server.")
            }
            LeaseError::SerializationFailure { .. } => {
                Some("The lease changed after this transaction's snapshot was taken; retry the transaction.")
            }
            LeaseError::NeedsUpdate(..) => Some("Run ALTER EXTENSION lease UPDATE in this database."),
            LeaseError::LifelineLapsed { .. } => Some(
                "The leases attached to it have ended; stop the protected work and open a new lifeline.",
            ),
            LeaseError::NotLifelineOwner { .. } => {
                Some("Only members of the role that opened a lifeline may renew, close or attach to it.")
            }
            LeaseError::NoCapacity { .. } => {
                Some("State the capacity with capacity => N, or declare it with lease_set_capacity.")
            }
            LeaseError::TooManyToWait { .. } => {
                Some("Call it without wait (it then takes any number at once), or split the claim.")
            }
            LeaseError::BoundElsewhere { .. } => Some(
                "A session-bound lease belongs to the session that bound it; re-acquire it from that session or without session_bound.",
            ),
            _ => None,
        }
    }

    /// Reports the error to PostgreSQL; does not return.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.message(), "lease");
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// Unwraps a lease result at the SQL boundary, raising the error if there is one.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for LeaseResult<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|error| error.raise())
    }
}
