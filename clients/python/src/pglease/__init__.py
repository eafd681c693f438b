"""Fenced, time-limited leases from the PostgreSQL extension `lease`, with background renewal,
loss detection, fencing helpers, leader election and job claims, over psycopg 3.

Blocking:  `Client`, `Lease`, `Claim`, `Election`.
asyncio:   `AsyncClient`, `AsyncLease`, `AsyncClaim`, `AsyncElection`.
"""

from .core import (
    AsyncClaim,
    AsyncClient,
    AsyncElection,
    AsyncLease,
    LeaseEvent,
    LeaseInfo,
    Loss,
)
from .errors import (
    ConnectionFailed,
    DeadlockDetected,
    InvalidArgument,
    LeaseError,
    LeaseLost,
    LeaseTimeout,
    LeaseUnavailable,
    LeaseUsageError,
    LockUnavailable,
    NotSupported,
    PermissionDenied,
    ReadOnlyServer,
    SerializationFailure,
    SessionBindingConflict,
    WaitCancelled,
    WaitUnavailable,
    map_error,
)
from .sync import Claim, Client, Election, Lease

__version__ = "0.1.0"

__all__ = [
    "AsyncClaim", "AsyncClient", "AsyncElection", "AsyncLease", "Claim", "Client", "ConnectionFailed",
    "DeadlockDetected", "Election", "InvalidArgument", "Lease", "LeaseError", "LeaseEvent", "LeaseInfo",
    "LeaseLost", "LeaseTimeout", "LeaseUnavailable", "LeaseUsageError", "LockUnavailable", "Loss",
    "NotSupported", "PermissionDenied", "ReadOnlyServer", "SerializationFailure", "SessionBindingConflict",
    "WaitCancelled", "WaitUnavailable", "map_error",
]
