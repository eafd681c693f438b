//! The text of the store's statements, written for each shape of the table. Statements name
//! every object and operator with its schema, so the caller's `search_path` cannot change what
//! they do.
//!
//! Uses the column map (`row`).

use pgrx::pg_sys::{self, Oid};

use super::row::Shape;

/// The statements. Those after `Info` need the columns of 0.5.0 (lifelines), those after
/// `DeleteAttached` the slotted table of 0.6.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Statement {
    Insert,
    Current,
    TakeOver,
    Extend,
    Delete,
    ExpiredCandidates,
    DeleteExpired,
    NextExpiry,
    SessionBound,
    DeleteGrant,
    SessionTokensAlive,
    LeasedToOthers,
    Bind,
    Info,
    Reacquire,
    SetData,
    Keep,
    LifelineOpen,
    LifelineGet,
    LifelineRenew,
    LifelineDelete,
    LifelineLeases,
    LapsedLifelines,
    SessionBoundLifelines,
    DeleteAttached,
    CapacityGet,
    CapacityDeclare,
    CapacitySet,
    CapacityRemove,
}

pub(super) const STATEMENTS: usize = Statement::CapacityRemove as usize + 1;
pub(super) const SHAPES: usize = Shape::Slotted as usize + 1;

const TEXT: Oid = pg_sys::TEXTOID;
const INT4: Oid = pg_sys::INT4OID;
const INT8: Oid = pg_sys::INT8OID;
const ROLE: Oid = pg_sys::REGROLEOID;
const TSTZ: Oid = pg_sys::TIMESTAMPTZOID;
const JSONB: Oid = pg_sys::JSONBOID;
const INTERVAL: Oid = pg_sys::INTERVALOID;
const INT8_ARRAY: Oid = pg_sys::INT8ARRAYOID;
const TEXT_ARRAY: Oid = pg_sys::TEXTARRAYOID;

/// The select list of a [`Lease`], in the order [`lease`] reads it; every statement that
/// returns a lease uses it.
fn lease_columns(shape: Shape) -> &'static str {
    match shape {
        Shape::Classic => "holder, token, owner, acquired_at, expires_at, session_pid IS NOT NULL",
        Shape::Lifelines => {
            "holder, token, owner, acquired_at, expires_at, session_pid IS NOT NULL, lifeline, data,
             released_at IS NOT NULL"
        }
        Shape::Slotted => {
            "holder, token, owner, acquired_at, expires_at, session_pid IS NOT NULL, lifeline, data,
             released_at IS NOT NULL, slot, mode"
        }
    }
}

/// A row's slot and mode, as a scan lists them (slot 0 and exclusive in the tables before 0.6.0,
/// which have one row per resource).
fn place_columns(shape: Shape) -> &'static str {
    match shape {
        Shape::Slotted => "slot, mode",
        _ => "0, 'exclusive'::pg_catalog.text",
    }
}

/// A lease's expiry, its lifeline's for an attached lease (NULL when the lifeline is gone), as
/// an expression on a row of `lease.leases` named `l`.
fn lease_expiry(shape: Shape) -> &'static str {
    match shape {
        Shape::Classic => "l.expires_at",
        Shape::Lifelines | Shape::Slotted => {
            "CASE WHEN l.lifeline IS NULL THEN l.expires_at
                  ELSE (SELECT f.expires_at FROM lease.lifelines AS f WHERE f.id OPERATOR(pg_catalog.=) l.lifeline) END"
        }
    }
}

/// The condition that the lease was not released with a minimum hold (only the current shape
/// can have such leases).
fn not_kept(shape: Shape) -> &'static str {
    match shape {
        Shape::Classic => "",
        Shape::Lifelines | Shape::Slotted => " AND released_at IS NULL",
    }
}

/// SQL text and parameter types of `statement` for a table of `shape`; None for a statement
/// that shape does not have.
pub(super) fn source(statement: Statement, shape: Shape) -> Option<(String, Vec<Oid>)> {
    let columns = shape.columns();
    let types = |types: &[Oid]| types.to_vec();
    let lease = lease_columns(shape);
    let not_kept = not_kept(shape);
    let not_attached = if shape.has_lifelines() { " AND lifeline IS NULL" } else { "" };
    let place = place_columns(shape);
    // Rows in slot order (tables before 0.6.0 have one row per resource).
    let (by_slot, then_slot) = match shape {
        Shape::Slotted => (" ORDER BY slot", ", slot"),
        _ => ("", ""),
    };
    let key = if shape == Shape::Slotted { "resource, slot" } else { "resource" };
    use Statement::*;
    if !shape.has_lifelines() && statement as usize > Info as usize
        || shape != Shape::Slotted && statement as usize > DeleteAttached as usize
    {
        return None;
    }
    Some(match statement {
        Insert => {
            let names: Vec<&str> = columns.iter().map(|(name, _, _)| *name).collect();
            let parameters: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
            (
                format!(
                    "INSERT INTO lease.leases ({}) VALUES ({}) ON CONFLICT ({key}) DO NOTHING",
                    names.join(", "),
                    parameters.join(", ")
                ),
                columns.iter().map(|(_, oid, _)| *oid).collect(),
            )
        }
        Current => (
            format!("SELECT {lease} FROM lease.leases WHERE resource OPERATOR(pg_catalog.=) $1{by_slot}"),
            types(&[TEXT]),
        ),
        TakeOver => {
            let set: Vec<String> = columns
                .iter()
                .enumerate()
                .skip(1)
                .map(|(at, (name, _, _))| format!("{name} = ${}", at + 1))
                .collect();
            let mut oids: Vec<Oid> = columns.iter().map(|(_, oid, _)| *oid).collect();
            oids.push(INT8);
            (
                format!(
                    "UPDATE lease.leases SET {} WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) ${}",
                    set.join(", "),
                    columns.len() + 1
                ),
                oids,
            )
        }
        Extend => (
            format!(
                "UPDATE lease.leases SET renewed_at = $3, expires_at = $4
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                    AND expires_at OPERATOR(pg_catalog.>) $3{not_kept}{not_attached}
                  RETURNING {lease}"
            ),
            types(&[TEXT, INT8, TSTZ, TSTZ]),
        ),
        Delete => (
            format!(
                "DELETE FROM lease.leases AS l
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                    AND {expiry} OPERATOR(pg_catalog.>) $3{not_kept}
                  RETURNING {lease}",
                expiry = lease_expiry(shape)
            ),
            types(&[TEXT, INT8, TSTZ]),
        ),
        ExpiredCandidates => (
            format!(
                "SELECT resource, token, {place} FROM lease.leases
                  WHERE expires_at OPERATOR(pg_catalog.<=) $1 ORDER BY expires_at LIMIT $2"
            ),
            types(&[TSTZ, INT8]),
        ),
        DeleteExpired => (
            format!(
                "DELETE FROM lease.leases
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                    AND expires_at OPERATOR(pg_catalog.<=) $3
                  RETURNING {lease}"
            ),
            types(&[TEXT, INT8, TSTZ]),
        ),
        NextExpiry => match shape {
            Shape::Classic => ("SELECT pg_catalog.min(expires_at) FROM lease.leases".into(), vec![]),
            Shape::Lifelines | Shape::Slotted => (
                "SELECT pg_catalog.min(e) FROM (SELECT pg_catalog.min(expires_at) FROM lease.leases
                  UNION ALL SELECT pg_catalog.min(expires_at) FROM lease.lifelines) AS m(e)"
                    .into(),
                vec![],
            ),
        },
        SessionBound => {
            (format!("SELECT resource, token, {place} FROM lease.leases WHERE session_pid IS NOT NULL"), vec![])
        }
        DeleteGrant => (
            format!(
                "DELETE FROM lease.leases
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                  RETURNING {lease}"
            ),
            types(&[TEXT, INT8]),
        ),
        SessionTokensAlive => match shape {
            Shape::Classic => (
                "SELECT token FROM lease.leases
                  WHERE token OPERATOR(pg_catalog.=) ANY ($1) AND session_pid IS NOT NULL"
                    .into(),
                types(&[INT8_ARRAY]),
            ),
            Shape::Lifelines | Shape::Slotted => (
                "SELECT token FROM lease.leases
                  WHERE token OPERATOR(pg_catalog.=) ANY ($1) AND session_pid IS NOT NULL
                 UNION ALL
                 SELECT id FROM lease.lifelines
                  WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND session_pid IS NOT NULL"
                    .into(),
                types(&[INT8_ARRAY]),
            ),
        },
        LeasedToOthers => (
            format!(
                "SELECT resource FROM lease.leases AS l
                  WHERE resource OPERATOR(pg_catalog.=) ANY ($1) AND {expiry} OPERATOR(pg_catalog.>) $2
                    AND session_pid IS NULL{unbound_lifeline}
                    AND NOT (holder OPERATOR(pg_catalog.=) $3 AND owner OPERATOR(pg_catalog.=) $4{not_kept})",
                expiry = lease_expiry(shape),
                unbound_lifeline = match shape {
                    Shape::Classic => "",
                    Shape::Lifelines | Shape::Slotted => {
                        " AND NOT EXISTS (SELECT FROM lease.lifelines AS f
                                           WHERE f.id OPERATOR(pg_catalog.=) l.lifeline AND f.session_pid IS NOT NULL)"
                    }
                }
            ),
            types(&[TEXT_ARRAY, TSTZ, TEXT, ROLE]),
        ),
        Bind => (
            "UPDATE lease.leases SET session_pid = $3, application_name = $4
              WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2"
                .into(),
            types(&[TEXT, INT8, INT4, TEXT]),
        ),
        Info => match shape {
            Shape::Classic => (
                "SELECT holder, token, owner, owner::pg_catalog.text, acquired_at, renewed_at, expires_at,
                        session_pid, application_name, NULL::pg_catalog.int8, NULL::pg_catalog.jsonb,
                        NULL::pg_catalog.timestamptz, 'exclusive'::pg_catalog.text, NULL::pg_catalog.int4
                  FROM lease.leases
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND expires_at OPERATOR(pg_catalog.>) $2"
                    .into(),
                types(&[TEXT, TSTZ]),
            ),
            Shape::Lifelines | Shape::Slotted => (
                format!(
                    "SELECT l.holder, l.token, l.owner, l.owner::pg_catalog.text, l.acquired_at, l.renewed_at,
                            e.expires_at, l.session_pid, l.application_name, l.lifeline, l.data, l.released_at,
                            {mode}, {capacity}
                      FROM lease.leases AS l CROSS JOIN LATERAL (SELECT {expiry}) AS e(expires_at)
                      WHERE l.resource OPERATOR(pg_catalog.=) $1 AND e.expires_at OPERATOR(pg_catalog.>) $2
                      {by_slot}",
                    expiry = lease_expiry(shape),
                    mode = if shape == Shape::Slotted { "l.mode" } else { "'exclusive'::pg_catalog.text" },
                    capacity = if shape == Shape::Slotted {
                        "CASE WHEN l.mode OPERATOR(pg_catalog.=) 'permit' THEN
                           (SELECT c.capacity FROM lease.capacities AS c WHERE c.resource OPERATOR(pg_catalog.=) l.resource) END"
                    } else {
                        "NULL::pg_catalog.int4"
                    },
                ),
                types(&[TEXT, TSTZ]),
            ),
        },
        Reacquire => (
            format!(
                "UPDATE lease.leases
                  SET renewed_at = $3, expires_at = $4, lifeline = $5, data = COALESCE($6, data)
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2{not_kept}
                  RETURNING {lease}"
            ),
            types(&[TEXT, INT8, TSTZ, TSTZ, INT8, JSONB]),
        ),
        SetData => (
            format!(
                "UPDATE lease.leases SET data = $3
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2{not_kept}
                  RETURNING {lease}"
            ),
            types(&[TEXT, INT8, JSONB]),
        ),
        Keep => (
            format!(
                "UPDATE lease.leases
                  SET expires_at = $3, released_at = $4, session_pid = NULL, application_name = NULL,
                      lifeline = NULL
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2{not_kept}
                  RETURNING {lease}"
            ),
            types(&[TEXT, INT8, TSTZ, TSTZ]),
        ),
        LifelineOpen => (
            "INSERT INTO lease.lifelines
               (id, name, owner, ttl, opened_at, renewed_at, expires_at, session_pid, application_name)
              VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)"
                .into(),
            types(&[INT8, TEXT, ROLE, INTERVAL, TSTZ, TSTZ, INT4, TEXT]),
        ),
        LifelineGet => (
            "SELECT owner, expires_at, session_pid IS NOT NULL,
                    (LEAST(EXTRACT(EPOCH FROM ttl), 1e12) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8
              FROM lease.lifelines WHERE id OPERATOR(pg_catalog.=) $1"
                .into(),
            types(&[INT8]),
        ),
        LifelineRenew => (
            "UPDATE lease.lifelines SET renewed_at = $2, expires_at = $3
              WHERE id OPERATOR(pg_catalog.=) $1 AND expires_at OPERATOR(pg_catalog.>) $2"
                .into(),
            types(&[INT8, TSTZ, TSTZ]),
        ),
        LifelineDelete => (
            "DELETE FROM lease.lifelines WHERE id OPERATOR(pg_catalog.=) $1 RETURNING expires_at".into(),
            types(&[INT8]),
        ),
        LifelineLeases => (
            format!(
                "SELECT resource, token, {place} FROM lease.leases WHERE lifeline OPERATOR(pg_catalog.=) $1
                  ORDER BY resource{then_slot} LIMIT $2"
            ),
            types(&[INT8, INT8]),
        ),
        LapsedLifelines => (
            "SELECT id FROM lease.lifelines
              WHERE expires_at OPERATOR(pg_catalog.<=) $1 ORDER BY expires_at LIMIT $2"
                .into(),
            types(&[TSTZ, INT8]),
        ),
        SessionBoundLifelines => {
            ("SELECT id FROM lease.lifelines WHERE session_pid IS NOT NULL".into(), vec![])
        }
        DeleteAttached => (
            format!(
                "DELETE FROM lease.leases
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                    AND lifeline OPERATOR(pg_catalog.=) $3 AND released_at IS NULL
                  RETURNING {lease}"
            ),
            types(&[TEXT, INT8, INT8]),
        ),
        CapacityGet => (
            "SELECT capacity FROM lease.capacities WHERE resource OPERATOR(pg_catalog.=) $1".into(),
            types(&[TEXT]),
        ),
        CapacityDeclare => (
            "INSERT INTO lease.capacities (resource, capacity) VALUES ($1, $2) ON CONFLICT (resource) DO NOTHING"
                .into(),
            types(&[TEXT, INT4]),
        ),
        CapacitySet => (
            "INSERT INTO lease.capacities AS c (resource, capacity) VALUES ($1, $2)
               ON CONFLICT (resource) DO UPDATE SET capacity = EXCLUDED.capacity"
                .into(),
            types(&[TEXT, INT4]),
        ),
        CapacityRemove => (
            "DELETE FROM lease.capacities WHERE resource OPERATOR(pg_catalog.=) $1".into(),
            types(&[TEXT]),
        ),
    })
}
