"""Typed exceptions for the lease extension's SQLSTATEs (README, "Errors") and for what the client
itself decides (a lease lost by its own clock, an answer that did not come in time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import psycopg

if TYPE_CHECKING:
    from .core import Loss


class LeaseError(Exception):
    """Base class of every error this package raises. `sqlstate` is the server's code, or None
    when the client decided on its own."""

    sqlstate: Optional[str] = None

    def __init__(self, message: str, *, sqlstate: Optional[str] = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate


class LeaseUnavailable(LeaseError):
    """Another holder has the lease (an acquire without `wait` returned NULL, or the wait ran out)."""


class LeaseLost(LeaseError):
    """The lease is no longer held: `lease_assert` refused the token (`sqlstate` "55000"), or the
    client found it lost (renewal refused, an event, its own deadline passed; `sqlstate` None).
    `loss` says how."""

    def __init__(self, message: str, *, loss: "Optional[Loss]" = None, sqlstate: Optional[str] = None) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.loss = loss


class LeaseTimeout(LeaseError):
    """The server did not answer in time (a stalled network or server); the connection was cut."""


class LeaseUsageError(LeaseError):
    """The client was used in a way that cannot work, such as fencing outside a transaction."""


class InvalidArgument(LeaseError, ValueError):
    """22004 (a NULL argument), 22023 (a bad value: blank name, ttl out of range, ...), 22007."""


class WaitUnavailable(LeaseError):
    """55000 from an acquire with `wait`: the server does not preload the library."""


class SessionBindingConflict(LeaseError):
    """55006: a session-bound re-acquire of a lease bound to another live session."""


class WaitCancelled(LeaseError):
    """57014: a waiting acquire cancelled or ended by `statement_timeout`."""


class LockUnavailable(LeaseError):
    """55P03: a waiting acquire ended by `lock_timeout`."""


class ReadOnlyServer(LeaseError):
    """25006: a change asked of a hot standby; use the primary."""


class PermissionDenied(LeaseError):
    """42501: the lease belongs to a role the caller is not a member of."""


class SerializationFailure(LeaseError):
    """40001: a REPEATABLE READ/SERIALIZABLE transaction read an older state of the lease; retry."""


class DeadlockDetected(LeaseError):
    """40P01: resources fenced or changed in opposite orders."""


class NotSupported(LeaseError):
    """0A000: PREPARE TRANSACTION of a transaction that changed leases."""


class ConnectionFailed(LeaseError):
    """The connection to the server failed or was closed."""


_BY_SQLSTATE: dict[str, type[LeaseError]] = {
    "22004": InvalidArgument,
    "22023": InvalidArgument,
    "22007": InvalidArgument,
    "55006": SessionBindingConflict,
    "57014": WaitCancelled,
    "55P03": LockUnavailable,
    "25006": ReadOnlyServer,
    "42501": PermissionDenied,
    "40001": SerializationFailure,
    "40P01": DeadlockDetected,
    "0A000": NotSupported,
}


def map_error(error: psycopg.Error, *, fencing: bool = False) -> LeaseError:
    """The typed exception for a server error. 55000 means a refused token when fencing
    (`lease_assert`), and a server without the preloaded library when acquiring with `wait`."""
    sqlstate = error.sqlstate
    message = str(error).strip() or type(error).__name__
    if sqlstate == "55000":
        kind: type[LeaseError] = LeaseLost if fencing else WaitUnavailable
    elif sqlstate is None or isinstance(error, psycopg.OperationalError) and sqlstate.startswith(("08", "57P")):
        kind = ConnectionFailed
    else:
        kind = _BY_SQLSTATE.get(sqlstate, LeaseError)
    mapped = kind(message, sqlstate=sqlstate)
    mapped.__cause__ = error
    return mapped
