// Typed errors for the lease extension's SQLSTATEs (README, "Errors") and for what the client
// decides itself (a lease lost by its own clock, an answer that did not come in time).

/** Why a lease was lost; see the README ("When is a lease lost"). */
export interface Loss {
  cause: "refused" | "revoked" | "released" | "expired" | "session_ended" | "deadline" | "fence" | "error" | "closed";
  detail: string;
  fromEvent: boolean;
}

/** Base class of every error this package throws; `sqlstate` is null when the client decided. */
export class LeaseError extends Error {
  sqlstate: string | null;
  constructor(message: string, sqlstate: string | null = null, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.sqlstate = sqlstate;
  }
}
/** Another holder has the lease (an acquire without `wait` returned NULL, or the wait ran out). */
export class LeaseUnavailable extends LeaseError {}
/** The lease is no longer held: lease_assert refused the token (`sqlstate` "55000"), or the client
 * found it lost (`sqlstate` null). */
export class LeaseLost extends LeaseError {
  loss: Loss | null;
  constructor(message: string, loss: Loss | null = null, sqlstate: string | null = null, options?: { cause?: unknown }) {
    super(message, sqlstate, options);
    this.loss = loss;
  }
}
/** The server did not answer in time; the connection was cut. */
export class LeaseTimeout extends LeaseError {}
/** The client was used in a way that cannot work. */
export class LeaseUsageError extends LeaseError {}
/** 22004, 22023, 22007: a NULL or bad argument. */
export class InvalidArgument extends LeaseError {}
/** 55000 from an acquire with `wait`: the library is not preloaded. */
export class WaitUnavailable extends LeaseError {}
/** 55006: a session-bound re-acquire of a lease bound to another live session. */
export class SessionBindingConflict extends LeaseError {}
/** 57014: a waiting acquire cancelled or ended by statement_timeout. */
export class WaitCancelled extends LeaseError {}
/** 55P03: a waiting acquire ended by lock_timeout. */
export class LockUnavailable extends LeaseError {}
/** 25006: a change asked of a hot standby. */
export class ReadOnlyServer extends LeaseError {}
/** 42501: the lease belongs to a role the caller is not a member of. */
export class PermissionDenied extends LeaseError {}
/** 40001: a REPEATABLE READ/SERIALIZABLE transaction read an older state of the lease. */
export class SerializationFailure extends LeaseError {}
/** 40P01. */
export class DeadlockDetected extends LeaseError {}
/** 0A000: PREPARE TRANSACTION of a transaction that changed leases. */
export class NotSupported extends LeaseError {}
/** The connection failed or was closed. */
export class ConnectionFailed extends LeaseError {}

const BY_SQLSTATE: Record<string, new (message: string, sqlstate: string, options?: { cause?: unknown }) => LeaseError> = {
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
};

/** The typed error for an error of node-postgres. 55000 is a refused token when fencing, and a
 * server without the preloaded library when acquiring with `wait`. */
export function mapError(error: unknown, fencing = false): LeaseError {
  if (error instanceof LeaseError) return error;
  const code: unknown = (error as { code?: unknown })?.code;
  const message = error instanceof Error ? error.message : String(error);
  // A server error has a severity; a socket error's code (EPIPE, ECONNRESET) is an errno name.
  const fromServer = typeof (error as { severity?: unknown })?.severity === "string";
  const sqlstate = fromServer && typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? code : null;
  if (sqlstate === "55000") {
    return fencing ? new LeaseLost(message, null, sqlstate, { cause: error }) : new WaitUnavailable(message, sqlstate, { cause: error });
  }
  if (sqlstate === null || sqlstate.startsWith("08") || sqlstate.startsWith("57P")) {
    return new ConnectionFailed(message, sqlstate, { cause: error });
  }
  const Kind = BY_SQLSTATE[sqlstate] ?? LeaseError;
  return new Kind(message, sqlstate, { cause: error });
}
