//! Proofs: the resources this transaction has shown it holds (for `lease_fence`).
//!
//! Uses vocabulary, and the resource keys of the barrier.

use super::resource_key;
use crate::vocabulary::nesting_level;

// Proofs: the resources this transaction has shown it holds, each with the subtransaction
// level of the call. A call that succeeded with a token that held the resource (a fence, a
// grant, an extension, a release) took the resource's lock, which keeps every other grant out
// until this transaction ends; so the proof stays true for as long as the lock is kept, and is
// dropped with the (sub)transaction that took it. `lease_fence` lets a row change that does not
// state a token pass on a proof.
thread_local! {
    /// This transaction's proofs: (subtransaction level, resource).
    static PROVEN: std::cell::RefCell<Vec<(i32, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records that a call of this transaction that keeps the resource's lock succeeded with a
/// token that held `resource`.
pub fn prove(resource: &str) {
    let level = nesting_level();
    PROVEN.with(|proven| {
        let mut proven = proven.borrow_mut();
        if !proven.iter().any(|(at, name)| *at <= level && name == resource) {
            proven.push((level, resource.to_owned()));
        }
    });
}

/// Whether this transaction proved that it holds `resource`.
pub fn proven(resource: &str) -> bool {
    PROVEN.with(|proven| proven.borrow().iter().any(|(_, name)| name == resource))
}

/// At the end of the transaction: every proof ends with its locks. Returns the lock keys of the
/// resources proved, whose waiters may find them free now (computed only as they are read).
pub fn at_transaction_end() -> impl Iterator<Item = u64> {
    let proven = PROVEN.with(|proven| std::mem::take(&mut *proven.borrow_mut()));
    proven.into_iter().map(|(_, resource)| resource_key(&resource))
}

/// At the abort of the subtransaction at `level`: its locks are gone, and its proofs with them.
pub fn at_subtransaction_abort(level: i32) {
    PROVEN.with(|proven| proven.borrow_mut().retain(|(at, _)| *at < level));
}

/// At the commit of the subtransaction at `level`: its locks and proofs belong to the parent.
pub fn at_subtransaction_commit(level: i32) {
    PROVEN.with(|proven| {
        for (at, _) in proven.borrow_mut().iter_mut().filter(|(at, _)| *at >= level) {
            *at = level - 1;
        }
    });
}
