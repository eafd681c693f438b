//! The decision of a grant: from the lease row as found under the resource's barrier lock, the
//! server clock and the request, what to do. Pure: no PostgreSQL call, no shared memory; the
//! caller gathers the facts (including whether a session-bound holder's session ended, which
//! takes a lock to find out) and applies the decision (`attempt`).
//!
//! Uses vocabulary and the expiry reasons of events.

use pgrx::pg_sys::Oid;

use crate::events::Reason;
use crate::vocabulary::Timestamp;

/// The lease row as found, with what only a lock can tell about it.
#[derive(Clone, Debug)]
pub struct Found<'a> {
    pub holder: &'a str,
    pub owner: Oid,
    /// Its own expiry, or its lifeline's.
    pub expires_at: Timestamp,
    /// Session-bound, and its holder's session has ended (asked only of a live lease).
    pub session_ended: bool,
    /// Attached to a lifeline: it ends with it.
    pub attached: bool,
    /// Attached to a lifeline bound to a database session that has ended (asked only of a live
    /// lease).
    pub lifeline_ended: bool,
    /// Released with a minimum hold: nobody's, and nobody may have it before it expires.
    pub released: bool,
}

/// Who asks, and how.
#[derive(Clone, Copy, Debug)]
pub struct Asking<'a> {
    pub holder: &'a str,
    /// The calling role.
    pub role: Oid,
    /// Grant only if there is no lease row at all (`lease_acquire_any` with
    /// `snapshot_consistent`): no expired lease taken over, no lease of the caller's extended.
    pub only_if_free: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No row: insert a new grant.
    Insert,
    /// The lease ended (for this reason) but its row is still there: write a new grant over it.
    TakeOver(Reason),
    /// The caller's own live lease (same holder name, same role): move its expiry.
    Extend,
    /// Another holder's live lease, until this time; or any row, when only a free resource
    /// would do.
    Refuse { until: Timestamp },
    /// Free, but queued waiters come first.
    Yield,
}

/// What to do about the lease `found` (None: no row) at `now`, for `asking`; with
/// `waiters_first`, a grant is owed to a queued waiter instead.
pub fn decide(found: Option<&Found>, now: Timestamp, asking: &Asking, waiters_first: bool) -> Decision {
    let grant = |decision| if waiters_first { Decision::Yield } else { decision };
    let Some(found) = found else { return grant(Decision::Insert) };
    if asking.only_if_free {
        return Decision::Refuse { until: found.expires_at };
    }
    if found.expires_at <= now || found.lifeline_ended {
        let reason = if found.attached { Reason::LifelineExpired } else { Reason::Ttl };
        return grant(Decision::TakeOver(reason));
    }
    if found.session_ended {
        return grant(Decision::TakeOver(Reason::SessionEnded));
    }
    if found.released {
        return Decision::Refuse { until: found.expires_at };
    }
    match found.holder == asking.holder && found.owner == asking.role {
        true => Decision::Extend,
        false => Decision::Refuse { until: found.expires_at },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Asking = Asking { holder: "worker-1", role: Oid::from_u32(10), only_if_free: false };
    const NOW: Timestamp = 1_000;

    fn lease(holder: &str, role: u32, expires_at: Timestamp) -> Found<'_> {
        Found {
            holder,
            owner: Oid::from_u32(role),
            expires_at,
            session_ended: false,
            attached: false,
            lifeline_ended: false,
            released: false,
        }
    }

    #[test]
    fn a_free_resource_is_granted_unless_waiters_are_owed_it() {
        assert_eq!(decide(None, NOW, &ME, false), Decision::Insert);
        assert_eq!(decide(None, NOW, &ME, true), Decision::Yield);
    }

    #[test]
    fn a_lease_is_over_at_its_expiry_not_after() {
        let ended = lease("other", 11, NOW);
        assert_eq!(decide(Some(&ended), NOW, &ME, false), Decision::TakeOver(Reason::Ttl));
        assert_eq!(decide(Some(&ended), NOW, &ME, true), Decision::Yield);
        let live = lease("other", 11, NOW + 1);
        assert_eq!(decide(Some(&live), NOW, &ME, false), Decision::Refuse { until: NOW + 1 });
    }

    #[test]
    fn a_lease_whose_session_ended_is_taken_over() {
        let orphaned = Found { session_ended: true, ..lease("other", 11, NOW + 50) };
        assert_eq!(decide(Some(&orphaned), NOW, &ME, false), Decision::TakeOver(Reason::SessionEnded));
        assert_eq!(decide(Some(&orphaned), NOW, &ME, true), Decision::Yield);
    }

    #[test]
    fn a_lease_whose_lifeline_ended_is_taken_over_for_that_reason() {
        let lapsed = Found { attached: true, ..lease("other", 11, NOW) };
        assert_eq!(decide(Some(&lapsed), NOW, &ME, false), Decision::TakeOver(Reason::LifelineExpired));
        let orphaned = Found { attached: true, lifeline_ended: true, ..lease("other", 11, NOW + 50) };
        assert_eq!(decide(Some(&orphaned), NOW, &ME, false), Decision::TakeOver(Reason::LifelineExpired));
        assert_eq!(decide(Some(&orphaned), NOW, &ME, true), Decision::Yield);
        let live = Found { attached: true, ..lease("other", 11, NOW + 50) };
        assert_eq!(decide(Some(&live), NOW, &ME, false), Decision::Refuse { until: NOW + 50 });
    }

    #[test]
    fn a_lease_kept_after_release_is_refused_to_everyone_until_it_expires() {
        let kept = Found { released: true, ..lease("worker-1", 10, NOW + 50) };
        assert_eq!(decide(Some(&kept), NOW, &ME, false), Decision::Refuse { until: NOW + 50 });
        let over = Found { released: true, ..lease("worker-1", 10, NOW) };
        assert_eq!(decide(Some(&over), NOW, &ME, false), Decision::TakeOver(Reason::Ttl));
    }

    #[test]
    fn the_holders_own_live_lease_is_extended_even_with_waiters() {
        let mine = lease("worker-1", 10, NOW + 50);
        assert_eq!(decide(Some(&mine), NOW, &ME, false), Decision::Extend);
        assert_eq!(decide(Some(&mine), NOW, &ME, true), Decision::Extend);
    }

    #[test]
    fn the_same_name_under_another_role_is_another_holder() {
        let same_name = lease("worker-1", 11, NOW + 50);
        assert_eq!(decide(Some(&same_name), NOW, &ME, false), Decision::Refuse { until: NOW + 50 });
        let same_role = lease("worker-2", 10, NOW + 50);
        assert_eq!(decide(Some(&same_role), NOW, &ME, false), Decision::Refuse { until: NOW + 50 });
    }

    #[test]
    fn only_a_missing_row_will_do_when_only_free_is_asked() {
        let asking = Asking { only_if_free: true, ..ME };
        assert_eq!(decide(None, NOW, &asking, false), Decision::Insert);
        for found in [lease("worker-1", 10, NOW + 50), lease("other", 11, NOW - 1)] {
            assert_eq!(
                decide(Some(&found), NOW, &asking, false),
                Decision::Refuse { until: found.expires_at }
            );
        }
    }
}
