//! What shared leases and permits need of the SQL API: whether the database can serve the mode
//! a call asks for, and `lease_set_capacity`.
//!
//! Uses errors, barrier, store, waiting, grant's request and the argument checks.

use pgrx::prelude::*;

use super::arguments::{self, ensure_primary};
use crate::barrier;
use crate::errors::{LeaseError, LeaseResult, OrRaise};
use crate::grant;
use crate::store::{LeaseMode, Shape, Store};
use crate::waiting;

/// A shared lease or a permit needs the slotted table of 0.6.0; a permit without a capacity
/// needs the resource's declared one.
pub(super) fn ensure_served(request: &grant::Request) -> LeaseResult<()> {
    if request.mode == LeaseMode::Exclusive {
        return Ok(());
    }
    let store = Store::open();
    if store.shape() != Shape::Slotted {
        return Err(LeaseError::NeedsUpdate("shared leases and permits", "0.6.0"));
    }
    let undeclared = request.mode == LeaseMode::Permit && request.capacity.is_none();
    // (A claim's resource is empty: each of its candidates is asked when it is tried.)
    if undeclared && !request.resource.is_empty() && store.capacity(request.resource).is_none() {
        return Err(LeaseError::NoCapacity { resource: request.resource.into() });
    }
    Ok(())
}

/// Sets the capacity of the counting semaphore `resource` (NULL removes it) and returns the
/// previous one. Raising it lets waiters in at once; lowering it never revokes live permits.
/// Waits for the permit grants in progress. Not executable by PUBLIC.
#[pg_extern(sql = false)]
fn lease_set_capacity(resource: Option<&str>, capacity: Option<i32>) -> Option<i32> {
    (|| {
        let resource = arguments::resource(resource, "resource")?;
        let capacity = arguments::at_least_one(capacity, "capacity")?;
        ensure_primary()?;
        let store = Store::open();
        if store.shape() != Shape::Slotted {
            return Err(LeaseError::NeedsUpdate("capacities", "0.6.0"));
        }
        // After the permit grants in progress, and before any that start now.
        barrier::lock_kind_alone(resource);
        let previous = store.capacity(resource);
        store.set_capacity(resource, capacity);
        // Waiters look again once this transaction ends (in vain if it rolls back).
        waiting::wake_after_locks([barrier::resource_key(resource)]);
        Ok(previous)
    })()
    .or_raise()
}
