//! `lease_fence`: a trigger function that fences every row change of a protected table, so that
//! applications need no `lease_check` in their statements.
//!
//! `CREATE TRIGGER ... BEFORE INSERT OR UPDATE OR DELETE ON jobs FOR EACH ROW EXECUTE FUNCTION
//! lease_fence('resource_column', 'token_column' [, 'prefix'])`: the row's resource is `prefix`
//! followed by the text of `resource_column`, its token is `token_column` (a bigint). A change
//! passes only while the writing transaction holds that resource's lease, and then keeps every
//! other grant of the resource out until the transaction ends:
//! - an INSERT, and an UPDATE that sets the token column, pass when the new row's token holds
//!   its resource for the writer, exactly as [`crate::api::check`] decides (an UPDATE that moves
//!   the row to another resource must hold the old one too);
//! - a DELETE, and an UPDATE that leaves the token column out of its SET list, carry no token
//!   of the writer's: they pass only when the transaction proved earlier that it holds the row's
//!   resource ([`crate::barrier::prove`]: a passing `lease_check` or `lease_assert`, a grant, a
//!   renewal, a release, or a row this trigger passed). The token stored in the row proves
//!   nothing about the writer: it only says that *someone* held the lease.
//!
//! Uses errors, barrier and api (the check a row must pass is `lease_check`'s, arguments and
//! all).

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::{LeaseError, LeaseResult, OrRaise};
use crate::{api, barrier};

/// Trigger function: rejects (55000) a row change unless the row's token holds the lease on
/// its resource; arguments are the resource column, the token column and an optional prefix.
///
/// A plain C entry point rather than `#[pg_trigger]`, so that a call outside a trigger gets
/// the documented error instead of an internal one.
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo`.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn lease_fence_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo comes from the function manager; its context is a TriggerData exactly when
    // called_as_trigger says so, and then PgTrigger may read it for the rest of the call.
    unsafe {
        if !pgrx::trigger_support::called_as_trigger(fcinfo) {
            LeaseError::TriggerMisuse("lease_fence can only be called as a trigger".into()).raise();
        }
        let trigger = PgTrigger::from_fcinfo(fcinfo.as_ref().expect("fcinfo is not NULL"))
            .unwrap_or_else(|error| error!("lease_fence: {error}"));
        let row = fence(&trigger).or_raise();
        pg_sys::Datum::from(row)
    }
}

/// The function manager's record for [`lease_fence_wrapper`]: version-1 calling convention.
#[no_mangle]
pub extern "C" fn pg_finfo_lease_fence_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const VERSION_1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &VERSION_1
}

/// The trigger's arguments, resolved against the table.
struct Columns {
    resource: i32,
    token: i32,
    prefix: String,
}

/// Checks the row change and returns the row the trigger hands back (the new row, or the old
/// one for DELETE).
fn fence(trigger: &PgTrigger) -> LeaseResult<pg_sys::HeapTuple> {
    let misuse = |reason: &str| LeaseError::TriggerMisuse(format!("lease_fence {reason}"));
    if !matches!(trigger.level(), PgTriggerLevel::Row) || !matches!(trigger.when(), Ok(PgTriggerWhen::Before))
    {
        return Err(misuse("must be fired BEFORE, FOR EACH ROW"));
    }
    let data = trigger.trigger_data();
    let table = trigger.table_name().unwrap_or_default();
    // SAFETY: a row-level trigger's relation is open and locked for the whole call.
    let descriptor = unsafe { (*data.tg_relation).rd_att };
    let columns = columns(trigger, descriptor)?;
    let op = trigger.op().map_err(|_| misuse("must be fired for INSERT, UPDATE or DELETE"))?;
    match op {
        PgTriggerOperation::Insert => {
            // SAFETY: the new row of this trigger event, described by the relation's descriptor.
            let (resource, token) = unsafe { read_row(data.tg_trigtuple, descriptor, &columns) };
            holds(&table, resource.as_deref(), token)?;
            Ok(data.tg_trigtuple)
        }
        PgTriggerOperation::Update => {
            // SAFETY: the old and new rows of this UPDATE, described by the relation's descriptor;
            // tg_updatedcols is the statement's set of target columns.
            let ((old_resource, _), (resource, token), token_set) = unsafe {
                let token_set = pg_sys::bms_is_member(
                    columns.token - pg_sys::FirstLowInvalidHeapAttributeNumber,
                    data.tg_updatedcols,
                );
                (
                    read_row(data.tg_trigtuple, descriptor, &columns),
                    read_row(data.tg_newtuple, descriptor, &columns),
                    token_set,
                )
            };
            if token_set {
                // The writer states its token: it must hold the new resource, and the old one
                // too unless this transaction proved that already.
                holds(&table, resource.as_deref(), token)?;
                if old_resource != resource && !proven(old_resource.as_deref()) {
                    holds(&table, old_resource.as_deref(), token)?;
                }
            } else {
                for name in [&resource, &old_resource] {
                    if !proven(name.as_deref()) {
                        return Err(LeaseError::Unproven { table, resource: name.clone() });
                    }
                }
            }
            Ok(data.tg_newtuple)
        }
        _ => {
            // SAFETY: the old row of a DELETE, described by the relation's descriptor.
            let (resource, _) = unsafe { read_row(data.tg_trigtuple, descriptor, &columns) };
            if !proven(resource.as_deref()) {
                return Err(LeaseError::Unproven { table, resource });
            }
            Ok(data.tg_trigtuple)
        }
    }
}

/// The columns named by the trigger's arguments: the resource column (any type, read as text)
/// and the token column (bigint).
fn columns(trigger: &PgTrigger, descriptor: pg_sys::TupleDesc) -> LeaseResult<Columns> {
    let arguments = trigger.extra_args().unwrap_or_default();
    if !(2..=3).contains(&arguments.len()) {
        return Err(LeaseError::invalid(
            "lease_fence",
            format_args!(
                "expects 2 or 3 trigger arguments (resource column, token column, prefix), not {}",
                arguments.len()
            ),
        ));
    }
    let number = |name: &str| -> LeaseResult<i32> {
        let c_name =
            CString::new(name).map_err(|_| LeaseError::invalid("lease_fence", "column name has NUL"))?;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        let number = unsafe { pg_sys::SPI_fnumber(descriptor, c_name.as_ptr()) };
        if number <= 0 {
            return Err(LeaseError::UndefinedColumn {
                table: trigger.table_name().unwrap_or_default(),
                column: name.into(),
            });
        }
        Ok(number)
    };
    let resource = number(&arguments[0])?;
    let token = number(&arguments[1])?;
    // SAFETY: `token` is a user column of the descriptor.
    if unsafe { pg_sys::SPI_gettypeid(descriptor, token) } != pg_sys::INT8OID {
        return Err(LeaseError::ColumnType { column: arguments[1].clone(), expected: "bigint" });
    }
    Ok(Columns { resource, token, prefix: arguments.get(2).cloned().unwrap_or_default() })
}

/// The row's resource (prefixed, NULL if the column is) and token.
///
/// # Safety
/// `row` must be a valid tuple described by `descriptor`, and `columns` resolved against it.
unsafe fn read_row(
    row: pg_sys::HeapTuple,
    descriptor: pg_sys::TupleDesc,
    columns: &Columns,
) -> (Option<String>, Option<i64>) {
    let text = pg_sys::SPI_getvalue(row, descriptor, columns.resource);
    let resource =
        (!text.is_null()).then(|| format!("{}{}", columns.prefix, CStr::from_ptr(text).to_string_lossy()));
    let mut is_null = false;
    let datum = pg_sys::SPI_getbinval(row, descriptor, columns.token, &mut is_null);
    (resource, i64::from_datum(datum, is_null))
}

/// Passes if `token` holds `resource`'s exclusive lease for the writer, as `lease_check` decides
/// (which also records the proof and keeps other grants out until the transaction ends). A
/// shared lease's or a permit's token does not pass: it proves nothing (see
/// [`crate::barrier::prove`]).
fn holds(table: &str, resource: Option<&str>, token: Option<i64>) -> LeaseResult<()> {
    match (resource, token) {
        (Some(_), Some(_)) if api::check_exclusive(resource, token)? => Ok(()),
        _ => Err(LeaseError::Unfenced { table: table.into(), resource: resource.map(Into::into), token }),
    }
}

/// Whether this transaction proved that it holds the row's resource (see
/// [`crate::barrier::prove`]).
fn proven(resource: Option<&str>) -> bool {
    resource.is_some_and(barrier::proven)
}
