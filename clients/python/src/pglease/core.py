"""The asyncio client: the one implementation of renewal, loss detection, fencing, elections and
claims. The blocking client (`pglease.sync`) runs it on an event loop in a thread of its own."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Iterator, Optional, Sequence, Union

import psycopg
from psycopg import sql
from psycopg.pq import ConnStatus, TransactionStatus

from .errors import (
    ConnectionFailed,
    LeaseError,
    LeaseLost,
    LeaseTimeout,
    LeaseUnavailable,
    LeaseUsageError,
    map_error,
)

Seconds = Union[float, int, timedelta]
LostCallback = Callable[["AsyncLease", "Loss"], Any]
EventCallback = Callable[["LeaseEvent"], Any]

_ACQUIRE = "SELECT lease_acquire(%s, %s, %s, wait => %s, session_bound => %s)"
_ACQUIRE_ANY = (
    "SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s, max_count => %s, "
    "session_bound => %s, snapshot_consistent => %s)"
)
_RENEW = "SELECT u.r, lease_renew(u.r, u.t, %s) FROM unnest(%s::text[], %s::bigint[]) AS u(r, t)"
_RELEASE = "SELECT lease_release(%s, %s)"
_ASSERT = "SELECT lease_assert(%s, %s)"
_CHECK = "SELECT lease_check(%s, %s)"
_INFO = (
    "SELECT resource, holder, token, owner, acquired_at, renewed_at, expires_at, session_pid, "
    "application_name FROM lease_info(%s)"
)
# Releases what an acquire or claim whose answer was lost (cancelled, timed out, connection
# broken) may have been granted after all. Each attempt has a holder name of its own, so this
# touches nothing another lease object holds.
_RELEASE_ORPHAN = (
    "SELECT lease_release(i.resource, i.token) FROM unnest(%s::text[]) AS r(resource), lease_info(r.resource) AS i "
    "WHERE i.holder = %s AND i.owner = current_user AND i.token IS NOT NULL"
)
# Numbers the holder names of the lease objects of this process ("NAME#N").
_SERIAL = itertools.count(1)
# The ends of a lease that events announce.
_ENDINGS = {"released", "expired", "revoked"}
# How soon a task the loss of its lease cancelled is cancelled again if it still runs.
_CANCEL_AGAIN_S = 0.1


def seconds(value: Optional[Seconds], name: str, *, positive: bool = True) -> float:
    """Seconds from a number or a timedelta; None is 0. Checked here so a bad value never reaches
    the server half-used."""
    if value is None:
        number = 0.0
    elif isinstance(value, timedelta):
        number = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(f"{name} must be seconds (a number) or a timedelta, not {type(value).__name__}")
    if number != number or number < 0 or (positive and number == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'zero or more'}, not {value!r}")
    return number


def default_holder() -> str:
    """host:pid:random, unique per client object, so two clients never share a lease by accident."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def lease_holder(name: str) -> str:
    """The holder name one acquire (or one claim) uses on the server: the client's name plus a
    number unique in this process. Each lease object is thus a holder of its own: two tasks of one
    client never share a lease, and a second acquire by the same client waits or gets None like
    any other holder's."""
    return f"{name}#{next(_SERIAL)}"


@dataclass(frozen=True)
class Loss:
    """Why a lease was lost.

    `cause` is one of: "refused" (a renewal returned false: expired, taken over or revoked),
    "revoked", "released", "expired" (an event said so), "session_ended" (a session-bound
    lease's connection ended), "deadline" (the client's own clock passed the send time of the
    last successful renewal plus the ttl before a renewal was answered), "fence" (`lease_assert`
    refused the token), "error" (a renewal failed with an error other than a broken
    connection), "closed" (the client was closed)."""

    cause: str
    detail: str
    from_event: bool = False

    def __str__(self) -> str:
        return f"{self.cause}: {self.detail}"


@dataclass(frozen=True)
class LeaseInfo:
    """A row of `lease_info(resource)`. `token` is None for callers of another role."""

    resource: str
    holder: str
    token: Optional[int]
    owner: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    session_pid: Optional[int]
    application_name: Optional[str]


@dataclass(frozen=True)
class LeaseEvent:
    """One event of the `lease_events` channel (README, "Events")."""

    event: str
    resource: str
    holder: str
    token: int
    seq: Optional[int] = None
    reason: Optional[str] = None
    expires_at: Optional[str] = None
    at: Optional[str] = None

    @classmethod
    def parse(cls, payload: str) -> "LeaseEvent":
        data = json.loads(payload)
        return cls(
            event=data["event"], resource=data["resource"], holder=data["holder"], token=int(data["token"]),
            seq=data.get("seq"), reason=data.get("reason"), expires_at=data.get("expires_at"), at=data.get("at"),
        )


def _run_callback(callback: Callable[..., Any], *args: Any) -> None:
    """Calls a user callback in the loop; a coroutine it returns runs as a task of its own."""
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            asyncio.ensure_future(result)
    except Exception:  # a failing callback must not stop renewals
        import logging

        logging.getLogger("pglease").exception("callback %r failed", callback)


def _connection_of(target: Any) -> Any:
    return getattr(target, "connection", target)


def _check_fence_target(target: Any) -> None:
    conn = _connection_of(target)
    info = getattr(conn, "info", None)
    if info is not None and conn.autocommit and info.transaction_status == TransactionStatus.IDLE:
        raise LeaseUsageError(
            "fence() needs an open transaction on the connection it fences: in autocommit mode the "
            "check would commit on its own and protect nothing (use `with conn.transaction():`)"
        )


def cut(conn: Optional[psycopg.AsyncConnection]) -> None:
    """Shuts the connection's socket down without waiting for the server: a stalled call on it
    then fails at once instead of hanging, and the server sees the connection end."""
    if conn is None or conn.closed:
        return
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):
        pass


def _broken(conn: Optional[psycopg.AsyncConnection]) -> bool:
    return conn is None or conn.closed or conn.broken


async def _bounded(conn: psycopg.AsyncConnection, query: str, params: Sequence[Any], timeout: float) -> list[tuple]:
    """Runs one statement and returns its rows, or raises LeaseTimeout after `timeout` seconds,
    having cut the connection (the statement's task is left to fail on the cut socket: cancelling
    it would make psycopg wait for the server, which is what is not answering)."""

    async def run() -> list[tuple]:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()

    task = asyncio.ensure_future(run())
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
    except asyncio.CancelledError:
        # psycopg asks the server to cancel the statement and waits for its end; a server that
        # does not answer that either gets its connection cut.
        task.cancel()
        finished, _ = await asyncio.wait({task}, timeout=5.0)
        if not finished:
            cut(conn)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise
    if not done:
        cut(conn)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise LeaseTimeout(f"no answer from the server within {timeout:.3f} s")
    return task.result()


class AsyncLease:
    """A lease held by this client: its token, its state, and how to fence with it.

    Loss is reported four ways: `lost` (a threading.Event, set), `await wait_lost()`, the
    `on_lost` callbacks, and cancellation of the tasks registered with `guard()` (the task of an
    `async with client.lease(...)` block is registered)."""

    def __init__(
        self, client: "AsyncClient", resource: str, token: int, holder: str, ttl: float, session_bound: bool,
        valid_until: float,
    ) -> None:
        self.client = client
        self.resource = resource
        self.token = token
        self.holder = holder
        self.ttl = ttl
        self.session_bound = session_bound
        self.lost = threading.Event()
        self.loss: Optional[Loss] = None
        self.released = False
        self._valid_until = valid_until
        self._lost_async = asyncio.Event()
        self._callbacks: list[LostCallback] = []
        # Guarded tasks, each with how many times the loss of the lease cancelled it (0: not).
        self._guarded: dict[asyncio.Task[Any], int] = {}
        self._keeper: Optional[_Keeper] = None

    def __repr__(self) -> str:
        state = "released" if self.released else f"lost ({self.loss})" if self.loss else "held"
        return f"<AsyncLease {self.resource!r} token={self.token} {state}>"

    @property
    def valid_until(self) -> float:
        """`time.monotonic()` value until which the lease is surely held, unless revoked: the send
        time of the last successful acquire or renewal plus the ttl."""
        return self._valid_until

    @property
    def remaining(self) -> float:
        return max(0.0, self._valid_until - time.monotonic()) if self.held else 0.0

    @property
    def held(self) -> bool:
        """True while not lost, not released and before `valid_until` on the monotonic clock."""
        return self.loss is None and not self.released and time.monotonic() < self._valid_until

    @property
    def backend_pid(self) -> Optional[int]:
        """The server process of the connection that renews this lease (None while reconnecting)."""
        keeper = self._keeper
        return None if keeper is None or _broken(keeper.conn) else keeper.conn.info.backend_pid

    def on_lost(self, callback: LostCallback) -> None:
        """Calls `callback(lease, loss)` once when the lease is lost (at once if it already is)."""
        if self.loss is not None:
            asyncio.get_running_loop().call_soon(_run_callback, callback, self, self.loss)
        else:
            self._callbacks.append(callback)

    def guard(self, task: Optional[asyncio.Task[Any]] = None) -> None:
        """Cancels `task` (default: the current task) when the lease is lost."""
        task = task or asyncio.current_task()
        if task is None:
            raise LeaseUsageError("guard() needs a task")
        if self.loss is not None:
            task.cancel()
            self._guarded[task] = 1
        else:
            self._guarded.setdefault(task, 0)

    def unguard(self, task: Optional[asyncio.Task[Any]] = None) -> int:
        """Stops guarding `task`; returns how many times the loss of the lease cancelled it (0:
        not)."""
        return self._guarded.pop(task or asyncio.current_task(), 0)  # type: ignore[arg-type]

    def _cancel_again(self, task: asyncio.Task[Any]) -> None:
        """Cancels again a task the loss cancelled that still runs in its scope. Before Python
        3.12, `asyncio.wait_for` (psycopg waits for its socket with it) swallows a cancellation
        that arrives together with the answer it waited for, and the task would run on."""
        if self._guarded.get(task) and not task.done():
            task.cancel()
            self._guarded[task] += 1
            asyncio.get_running_loop().call_later(_CANCEL_AGAIN_S, self._cancel_again, task)

    async def wait_lost(self) -> Optional[Loss]:
        """Returns once the lease has ended: its loss, or None if it was released."""
        await self._lost_async.wait()
        return self.loss

    def ensure_held(self) -> None:
        """Raises LeaseLost unless `held`."""
        if not self.held:
            raise LeaseLost(self._lost_message(), loss=self.loss)

    def _lost_message(self) -> str:
        if self.released:
            return f"lease on {self.resource!r} (token {self.token}) was released"
        if self.loss is None:
            return f"lease on {self.resource!r} (token {self.token}) ran out by the client's clock"
        return f"lease on {self.resource!r} (token {self.token}) was lost: {self.loss}"

    def _lose(self, loss: Loss, wake: bool = True) -> None:
        """Marks the lease lost (once) and tells everyone who asked. The running task (one whose
        fence was just refused) is not cancelled: the LeaseLost it raises already tells it."""
        if self.loss is not None or self.released:
            return
        self.loss = loss
        self.lost.set()
        self._lost_async.set()
        if self._keeper is not None:
            self._keeper.drop(self, wake=wake)
        self.client._forget(self)
        try:
            running = asyncio.current_task()
        except RuntimeError:
            running = None
        for task in list(self._guarded):
            if not task.done() and task is not running:
                task.cancel()
                self._guarded[task] = 1
                task.get_loop().call_later(_CANCEL_AGAIN_S, self._cancel_again, task)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _run_callback(callback, self, loss)

    def _renewed(self, sent: float) -> None:
        self._valid_until = max(self._valid_until, sent + self.ttl)

    async def fence(self, target: Any) -> None:
        """Fences the caller's own transaction: `SELECT lease_assert(resource, token)` on `target`
        (an AsyncConnection or AsyncCursor in a transaction). From then on no other holder can
        be granted the resource until that transaction ends, so the writes after it commit only
        together with the check. Raises LeaseLost (and marks the lease lost) if the token no
        longer holds the resource; without a round trip if the client already knows."""
        _check_fence_target(target)
        self.ensure_held()
        try:
            await target.execute(_ASSERT, (self.resource, self.token))
        except psycopg.Error as error:
            mapped = map_error(error, fencing=True)
            if isinstance(mapped, LeaseLost):
                self._lose(Loss("fence", "lease_assert refused the token"))
                mapped.loss = self.loss
            raise mapped from error

    async def check(self, target: Any) -> bool:
        """`lease_check(resource, token)` on `target`: the same fence as a boolean."""
        if not self.held:
            return False
        try:
            cursor = await target.execute(_CHECK, (self.resource, self.token))
            held = bool((await cursor.fetchone())[0])
        except psycopg.Error as error:
            raise map_error(error) from error
        if not held:
            self._lose(Loss("fence", "lease_check returned false"))
        return held

    async def release(self) -> bool:
        """Stops renewing and releases the lease: True if the server released it, False if it was
        no longer held. A lease known to be gone is not asked about."""
        if self.released:
            return False
        known_gone = self.loss is not None and self.loss.cause not in ("deadline", "error", "closed")
        self.released = True
        self.lost.set()
        self._lost_async.set()
        self.client._forget(self)
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.drop(self, wake=False)  # _release closes it once the release is done
        for task in list(self._guarded):
            self._guarded.pop(task, None)
        if known_gone:
            return False
        return await self.client._release(self, keeper)

    async def __aenter__(self) -> "AsyncLease":
        self.guard()
        return self

    async def __aexit__(self, kind: Any, error: Any, traceback: Any) -> None:
        await _leave_scope(self, error)


async def _leave_scope(lease: AsyncLease, error: Optional[BaseException]) -> None:
    """Ends an `async with` scope: releases the lease; a cancellation caused by its loss becomes
    LeaseLost; a loss the block did not notice is raised as LeaseLost too."""
    task = asyncio.current_task()
    cancelled_by_loss = lease.unguard(task)
    lost = lease.loss
    await asyncio.shield(lease.release())
    # Every cancellation the loss made is taken back (those swallowed on the way too).
    uncancel = getattr(task, "uncancel", None)
    for _ in range(cancelled_by_loss if uncancel is not None else 0):
        uncancel()
    if isinstance(error, asyncio.CancelledError) and cancelled_by_loss:
        raise LeaseLost(f"lease on {lease.resource!r} (token {lease.token}) was lost: {lost}", loss=lost) from error
    if error is None and lost is not None:
        raise LeaseLost(f"lease on {lease.resource!r} (token {lease.token}) was lost: {lost}", loss=lost)


class _Keeper:
    """One connection of the client's own that renews a group of leases (one lease, or the
    leases of one claim) every third of the ttl, and releases them. Nothing else runs on it, so
    the holder's own transactions never delay a renewal."""

    def __init__(self, client: "AsyncClient", conn: psycopg.AsyncConnection, ttl: float, session_bound: bool, sent: float):
        self.client = client
        self.conn: Optional[psycopg.AsyncConnection] = conn
        self.ttl = ttl
        self.session_bound = session_bound
        self.sent = sent
        self.leases: dict[str, AsyncLease] = {}
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.task: Optional[asyncio.Task[None]] = None

    def start(self, leases: Sequence[AsyncLease]) -> None:
        for lease in leases:
            self.leases[lease.resource] = lease
            lease._keeper = self
        self.task = asyncio.ensure_future(self.run())
        self.client._tasks.add(self.task)
        self.task.add_done_callback(self.client._tasks.discard)

    def drop(self, lease: AsyncLease, wake: bool = True) -> None:
        if self.leases.get(lease.resource) is lease:
            del self.leases[lease.resource]
        if not self.leases and wake:
            self.wake.set()

    def lose_all(self, loss: Loss) -> None:
        for lease in list(self.leases.values()):
            lease._lose(loss)

    async def run(self) -> None:
        try:
            while self.leases:
                if self.session_bound and await self.idle_until_ended():
                    self.lose_all(Loss("session_ended", "the connection the lease was bound to ended"))
                    break
                if not self.session_bound:
                    try:
                        await asyncio.wait_for(self.wake.wait(), max(0.0, self.sent + self.ttl / 3 - time.monotonic()))
                    except asyncio.TimeoutError:
                        pass
                if self.leases:
                    await self.renew_round()
        finally:
            if not self.leases or self.client._closing:
                await self.close()

    async def idle_until_ended(self) -> bool:
        """Waits for the next renewal of session-bound leases while watching their connection:
        True as soon as it ends (the server closed it, say by pg_terminate_backend), so that the
        loss is reported at once rather than at the next renewal."""
        loop = asyncio.get_running_loop()
        while self.leases:
            left = self.sent + self.ttl / 3 - time.monotonic()
            if left <= 0 or self.wake.is_set():
                return False
            conn = self.conn
            if _broken(conn):
                return True
            readable = asyncio.Event()
            # A duplicate of the socket's descriptor: psycopg registers the socket itself while a
            # statement runs, and the two registrations must not replace each other.
            fd = os.dup(conn.pgconn.socket)
            loop.add_reader(fd, readable.set)
            try:
                waits = {asyncio.ensure_future(readable.wait()), asyncio.ensure_future(self.wake.wait())}
                try:
                    await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
            if readable.is_set() and not self.lock.locked():
                # Nothing runs on this connection now: whatever came is the server's goodbye (or a
                # notice). Reading it tells which.
                try:
                    conn.pgconn.consume_input()
                except psycopg.Error:
                    return True
                if conn.pgconn.status != ConnStatus.OK:
                    return True
            elif readable.is_set():
                await asyncio.sleep(0.01)  # a statement is running; look again after it
        return False

    async def renew_round(self) -> None:
        """Renews every lease of the group once, before the deadline (the send time of the last
        successful renewal plus the ttl), reconnecting after a broken connection unless the leases
        are bound to it. What is not renewed by the deadline is lost."""
        deadline = self.sent + self.ttl
        pause = 0.05
        while self.leases:
            now = time.monotonic()
            if now >= deadline:
                self.lose_all(Loss("deadline", f"not renewed within the ttl ({self.ttl:g} s) of the last renewal sent"))
                return
            if _broken(self.conn):
                if self.session_bound:
                    self.lose_all(Loss("session_ended", "the connection the lease was bound to ended"))
                    return
                try:
                    self.conn = await asyncio.wait_for(self.client._connect(), deadline - now)
                except (psycopg.Error, OSError, asyncio.TimeoutError):
                    await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                    pause = min(pause * 2, self.ttl / 6)
                    continue
            sent = time.monotonic()
            resources = list(self.leases)
            tokens = [self.leases[r].token for r in resources]
            unanswered = Loss("deadline", f"a renewal was not answered within the ttl ({self.ttl:g} s)")
            # A release on this connection may hold the lock: the wait for it counts against the
            # deadline too, and so does the statement once the lock is ours.
            try:
                await asyncio.wait_for(self.lock.acquire(), max(0.0, deadline - sent))
            except asyncio.TimeoutError:
                self.lose_all(unanswered)
                return
            try:
                if _broken(self.conn):
                    continue
                rows = await _bounded(
                    self.conn, _RENEW, (timedelta(seconds=self.ttl), resources, tokens), deadline - time.monotonic()
                )
            except LeaseTimeout:
                self.lose_all(unanswered)
                return
            except psycopg.Error as error:
                if _broken(self.conn):
                    continue
                self.lose_all(Loss("error", f"renewal failed: {map_error(error)}"))
                return
            finally:
                self.lock.release()
            if time.monotonic() >= deadline:
                # Answered, but too late (a stalled loop): the lease may have expired meanwhile.
                self.lose_all(unanswered)
                return
            self.sent = sent
            for resource, renewed in rows:
                lease = self.leases.get(resource)
                if lease is None:
                    continue
                if renewed:
                    lease._renewed(sent)
                else:
                    lease._lose(Loss("refused", "lease_renew returned false (expired, revoked or taken over)"))
            return

    async def call(self, query: str, params: Sequence[Any]) -> list[tuple]:
        """A statement on this connection, after any renewal in progress, bounded by the client's
        timeout."""
        async with self.lock:
            if _broken(self.conn):
                raise ConnectionFailed("the lease's connection is closed")
            return await _bounded(self.conn, query, params, self.client.timeout)

    async def close(self) -> None:
        """Closes the connection once no statement runs on it (cut after the client's timeout)."""
        try:
            await asyncio.wait_for(self.lock.acquire(), self.client.timeout)
        except asyncio.TimeoutError:
            cut(self.conn)
            conn, self.conn = self.conn, None
        else:
            conn, self.conn = self.conn, None
            self.lock.release()
        if conn is not None and not conn.closed:
            try:
                await asyncio.wait_for(conn.close(), self.client.timeout)
            except (psycopg.Error, OSError, asyncio.TimeoutError):
                pass


class _Listener:
    """LISTENs on the event channel on a connection of its own and hands every event to the
    leases and watchers it concerns; reconnects (with growing pauses) if the connection fails."""

    def __init__(self, client: "AsyncClient") -> None:
        self.client = client
        self.conn: Optional[psycopg.AsyncConnection] = None
        self.task: Optional[asyncio.Task[None]] = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())
        try:
            await asyncio.wait_for(self.ready.wait(), self.client.timeout)
        except asyncio.TimeoutError:
            pass  # keeps trying in the background; renewals do not depend on it

    async def run(self) -> None:
        pause = 0.1
        while not self.client._closing:
            try:
                self.conn = await self.client._connect()
                await self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.client.channel)))
                self.ready.set()
                pause = 0.1
                async for notify in self.conn.notifies():
                    self.client._dispatch(notify.payload)
            except (psycopg.Error, OSError):
                pass
            finally:
                conn, self.conn = self.conn, None
                if conn is not None:
                    try:
                        await asyncio.wait_for(conn.close(), self.client.timeout)
                    except (psycopg.Error, OSError, asyncio.TimeoutError):
                        pass
            if not self.client._closing:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def stop(self) -> None:
        if self.conn is not None:
            cut(self.conn)
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass


class AsyncClient:
    """Leases over psycopg 3 (asyncio).

    `conninfo` is a libpq connection string (empty: the PG* variables); further keyword
    arguments go to `psycopg.AsyncConnection.connect`. Every connection is in autocommit mode
    with prepared statements off (`prepare_threshold=None`), so the client works behind
    PgBouncer in transaction pooling mode; there pass `listen=False` (LISTEN needs a session of
    its own) and leave `session_bound` off.

    `holder` names this client in the leases it takes (default host:pid:random); `timeout`
    bounds connecting and every call except a waiting acquire (which gets its `wait` on top)."""

    def __init__(
        self, conninfo: str = "", *, holder: Optional[str] = None, listen: bool = True,
        channel: str = "lease_events", timeout: float = 10.0, application_name: Optional[str] = None,
        **connect_kwargs: Any,
    ) -> None:
        self.conninfo = conninfo
        self.holder = holder or default_holder()
        self.listen = listen
        self.channel = channel
        self.timeout = seconds(timeout, "timeout")
        self.application_name = (application_name or f"pglease {self.holder}")[:63]
        self.connect_kwargs = connect_kwargs
        self._closing = False
        self._listener: Optional[_Listener] = None
        self._held: dict[tuple[str, int], set[AsyncLease]] = {}
        self._watchers: dict[str, list[EventCallback]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._elections: set[AsyncElection] = set()

    async def __aenter__(self) -> "AsyncClient":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def open(self) -> None:
        """Starts the event listener (with `listen=True`); acquiring does it too."""
        if self._closing:
            raise LeaseUsageError("the client is closed")
        if self.listen and self._listener is None:
            self._listener = _Listener(self)
            await self._listener.start()

    async def close(self) -> None:
        """Releases every lease still held, then closes every connection."""
        if self._closing:
            return
        for election in list(self._elections):
            await election.stop()
        for leases in list(self._held.values()):
            for lease in list(leases):
                # A loss first, so that guarded tasks, on_lost and wait_lost hear of it; then the
                # release on the server, so that the next holder need not wait for the ttl.
                lease._lose(Loss("closed", "the client was closed"), wake=False)
                try:
                    await lease.release()
                except LeaseError:
                    pass
        self._closing = True
        if self._listener is not None:
            await self._listener.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout)

    async def _connect(self) -> psycopg.AsyncConnection:
        kwargs = {"application_name": self.application_name, **self.connect_kwargs}
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, prepare_threshold=None, **kwargs),
            self.timeout,
        )

    def _forget(self, lease: AsyncLease) -> None:
        leases = self._held.get((lease.resource, lease.token))
        if leases is not None:
            leases.discard(lease)
            if not leases:
                del self._held[(lease.resource, lease.token)]

    def _dispatch(self, payload: str) -> None:
        try:
            event = LeaseEvent.parse(payload)
        except (ValueError, KeyError, TypeError):
            return
        if event.event in _ENDINGS:
            cause = "session_ended" if event.reason == "session_ended" else event.event
            for lease in list(self._held.get((event.resource, event.token), ())):
                lease._lose(Loss(cause, f"the server announced the lease {event.event}", from_event=True))
        for callback in list(self._watchers.get(event.resource, ())):
            _run_callback(callback, event)

    def watch(self, resource: str, callback: EventCallback) -> Callable[[], None]:
        """Calls `callback(event)` for every event of `resource` (needs `listen=True`); returns a
        function that stops it."""
        if not self.listen:
            raise LeaseUsageError("watch() needs a client with listen=True")
        self._watchers.setdefault(resource, []).append(callback)

        def stop() -> None:
            callbacks = self._watchers.get(resource, [])
            if callback in callbacks:
                callbacks.remove(callback)

        return stop

    async def info(self, resource: str) -> Optional[LeaseInfo]:
        """`lease_info(resource)`: who holds it now, or None when it is free."""
        conn = await self._connect_mapped()
        try:
            rows = await _bounded(conn, _INFO, (resource,), self.timeout)
        except psycopg.Error as error:
            raise map_error(error) from error
        finally:
            await conn.close()
        return LeaseInfo(*rows[0]) if rows else None

    async def try_acquire(
        self, resource: str, ttl: Seconds = 30.0, *, wait: Optional[Seconds] = None, session_bound: bool = False,
        holder: Optional[str] = None, on_lost: Optional[LostCallback] = None,
    ) -> Optional[AsyncLease]:
        """`lease_acquire`: the lease, renewed in the background until released or lost, or None
        when another holder has it (after waiting up to `wait`)."""
        ttl_s = seconds(ttl, "ttl")
        wait_s = seconds(wait, "wait", positive=False)
        holder = lease_holder(holder or self.holder)
        await self.open()
        conn = await self._connect_mapped()
        sent = time.monotonic()
        params = (resource, holder, timedelta(seconds=ttl_s), timedelta(seconds=wait_s) if wait_s else None, session_bound)
        try:
            rows = await _bounded(conn, _ACQUIRE, params, self.timeout + wait_s)
            token = rows[0][0]
            if token is not None and wait_s:
                # The grant came at some moment of the wait: renew at once so that the client's
                # deadline counts from a send time it knows.
                sent = time.monotonic()
                rows = await _bounded(conn, _RENEW, (timedelta(seconds=ttl_s), [resource], [token]), self.timeout)
                if not rows or not rows[0][1]:
                    token = None
        except (asyncio.CancelledError, LeaseTimeout):
            # The server has cancelled the wait (or granted the lease just before), or the answer
            # did not come in time: release a grant whose answer is lost, so nobody waits for its
            # ttl.
            await asyncio.shield(self._release_orphans([resource], holder))
            await asyncio.shield(conn.close())
            raise
        except psycopg.Error as error:
            if _broken(conn):
                await asyncio.shield(self._release_orphans([resource], holder))
            await conn.close()
            raise map_error(error) from error
        except BaseException:
            await conn.close()
            raise
        if token is None:
            await conn.close()
            return None
        lease = AsyncLease(self, resource, token, holder, ttl_s, session_bound, sent + ttl_s)
        if on_lost is not None:
            lease.on_lost(on_lost)
        self._held.setdefault((resource, token), set()).add(lease)
        _Keeper(self, conn, ttl_s, session_bound, sent).start([lease])
        return lease

    def lease(
        self, resource: str, ttl: Seconds = 30.0, *, wait: Optional[Seconds] = None, session_bound: bool = False,
        holder: Optional[str] = None, on_lost: Optional[LostCallback] = None,
    ) -> "_LeaseScope":
        """`async with client.lease("job:42", ttl=30) as lease:` acquires (raising LeaseUnavailable
        if another holder keeps it past `wait`), cancels the block's task if the lease is lost
        (raising LeaseLost out of the block), and releases on exit."""
        return _LeaseScope(self, resource, ttl, wait, session_bound, holder, on_lost)

    async def claim(
        self, resources: Sequence[str], ttl: Seconds = 30.0, *, max_count: int = 1, session_bound: bool = False,
        snapshot_consistent: bool = False, holder: Optional[str] = None, on_lost: Optional[LostCallback] = None,
    ) -> "AsyncClaim":
        """`lease_acquire_any`: up to `max_count` of `resources` (in order, skipping the busy and
        held ones, never waiting), renewed together on one connection; each lease is released
        or lost on its own. Resources this client already holds under `holder` are left out."""
        ttl_s = seconds(ttl, "ttl")
        # A holder name of the claim's own: what other lease objects of this client hold is busy
        # to it like anybody else's, so concurrent claims never return the same resource.
        holder = lease_holder(holder or self.holder)
        await self.open()
        conn = await self._connect_mapped()
        sent = time.monotonic()
        params = (list(resources), holder, timedelta(seconds=ttl_s), max_count, session_bound, snapshot_consistent)
        try:
            rows = await _bounded(conn, _ACQUIRE_ANY, params, self.timeout)
        except psycopg.Error as error:
            if _broken(conn):
                await asyncio.shield(self._release_orphans(list(resources), holder))
            await conn.close()
            raise map_error(error) from error
        except (asyncio.CancelledError, LeaseTimeout):
            # The answer is lost, not necessarily the grants: give them back.
            await asyncio.shield(self._release_orphans(list(resources), holder))
            await asyncio.shield(conn.close())
            raise
        except BaseException:
            await conn.close()
            raise
        leases = [AsyncLease(self, r, t, holder, ttl_s, session_bound, sent + ttl_s) for r, t in rows]
        for lease in leases:
            if on_lost is not None:
                lease.on_lost(on_lost)
            self._held.setdefault((lease.resource, lease.token), set()).add(lease)
        if leases:
            _Keeper(self, conn, ttl_s, session_bound, sent).start(leases)
        else:
            await conn.close()
        return AsyncClaim(leases)

    def election(
        self, resource: str, ttl: Seconds = 10.0, *, wait: Optional[Seconds] = None, session_bound: bool = False,
        name: Optional[str] = None, on_elected: Optional[Callable[[AsyncLease], Any]] = None,
        on_lost: Optional[LostCallback] = None, on_change: Optional[EventCallback] = None,
    ) -> "AsyncElection":
        """A leader election on `resource`; see AsyncElection."""
        return AsyncElection(self, resource, ttl, wait, session_bound, name, on_elected, on_lost, on_change)

    async def _connect_mapped(self) -> psycopg.AsyncConnection:
        try:
            return await self._connect()
        except psycopg.Error as error:
            raise map_error(error) from error
        except asyncio.TimeoutError as error:
            raise LeaseTimeout(f"could not connect within {self.timeout:g} s") from error

    async def _release(self, lease: AsyncLease, keeper: Optional[_Keeper]) -> bool:
        """lease_release on the lease's connection, or on a new one if that one is gone (not for a
        session-bound lease: its connection's end already ended it)."""
        if keeper is not None and not _broken(keeper.conn):
            try:
                return bool((await keeper.call(_RELEASE, (lease.resource, lease.token)))[0][0])
            except psycopg.Error as error:
                if not _broken(keeper.conn):
                    raise map_error(error) from error
            except (LeaseTimeout, ConnectionFailed):
                pass
            finally:
                if not keeper.leases:
                    await keeper.close()
        if lease.session_bound:
            return False
        conn = await self._connect_mapped()
        try:
            return bool((await _bounded(conn, _RELEASE, (lease.resource, lease.token), self.timeout))[0][0])
        except psycopg.Error as error:
            raise map_error(error) from error
        finally:
            await conn.close()

    async def _release_orphans(self, resources: list[str], holder: str) -> None:
        """After an acquire or claim whose answer was lost: releases what the attempt's own holder
        name holds among `resources` (no lease object knows it)."""
        try:
            conn = await self._connect()
            try:
                await _bounded(conn, _RELEASE_ORPHAN, (resources, holder), self.timeout)
            finally:
                await conn.close()
        except (psycopg.Error, OSError, LeaseError, asyncio.TimeoutError):
            pass  # it expires at its ttl


class _LeaseScope:
    def __init__(self, client: AsyncClient, resource: str, ttl: Seconds, wait: Optional[Seconds], session_bound: bool,
                 holder: Optional[str], on_lost: Optional[LostCallback]) -> None:
        self.args = (client, resource, ttl, wait, session_bound, holder, on_lost)
        self.lease: Optional[AsyncLease] = None

    async def __aenter__(self) -> AsyncLease:
        client, resource, ttl, wait, session_bound, holder, on_lost = self.args
        lease = await client.try_acquire(
            resource, ttl, wait=wait, session_bound=session_bound, holder=holder, on_lost=on_lost
        )
        if lease is None:
            raise LeaseUnavailable(f"lease on {resource!r} is held by another holder")
        self.lease = lease
        lease.guard()
        return lease

    async def __aexit__(self, kind: Any, error: Any, traceback: Any) -> None:
        assert self.lease is not None
        await _leave_scope(self.lease, error)


class AsyncClaim:
    """The leases one `claim()` got, renewed together. Iterable; `async with` releases what is
    left on exit."""

    def __init__(self, leases: list[AsyncLease]) -> None:
        self.leases = leases

    def __iter__(self) -> Iterator[AsyncLease]:
        return iter(self.leases)

    def __len__(self) -> int:
        return len(self.leases)

    def __getitem__(self, index: int) -> AsyncLease:
        return self.leases[index]

    async def release(self) -> list[bool]:
        """Releases every lease of the claim (an error on one does not stop the others; the first
        error is raised once all were tried)."""
        results: list[bool] = []
        failure: Optional[BaseException] = None
        for lease in self.leases:
            try:
                results.append(await lease.release())
            except LeaseError as error:
                results.append(False)
                failure = failure or error
        if failure is not None:
            raise failure
        return results

    async def __aenter__(self) -> "AsyncClaim":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.shield(self.release())


class AsyncElection:
    """Campaigns for `resource` until stopped: queues with `lease_acquire(..., wait)` (first come,
    first served), leads while the lease is held (renewed in the background), and campaigns
    again when it is lost.

    `on_elected(lease)` and `on_lost(lease, loss)` are called at each start and end of a term;
    `on_change(event)` for every event of the resource (with `listen=True`). `leader()` reads
    the current leader with `lease_info`. `stop()` resigns: it releases the lease if it leads,
    so a successor takes over at once."""

    def __init__(
        self, client: AsyncClient, resource: str, ttl: Seconds, wait: Optional[Seconds], session_bound: bool,
        name: Optional[str], on_elected: Optional[Callable[[AsyncLease], Any]], on_lost: Optional[LostCallback],
        on_change: Optional[EventCallback],
    ) -> None:
        self.client = client
        self.resource = resource
        self.ttl = seconds(ttl, "ttl")
        self.wait = seconds(wait, "wait") if wait is not None else self.ttl
        self.session_bound = session_bound
        self.name = name or client.holder
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.on_change = on_change
        self.lease: Optional[AsyncLease] = None
        self.terms = 0
        self._task: Optional[asyncio.Task[None]] = None
        self._elected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._unwatch: Optional[Callable[[], None]] = None

    @property
    def is_leader(self) -> bool:
        return self.lease is not None and self.lease.held

    async def start(self) -> None:
        await self.client.open()
        if self.on_change is not None and self._unwatch is None:
            self._unwatch = self.client.watch(self.resource, self.on_change)
        if self._task is None or self._task.done():
            self._stopped.clear()
            self.client._elections.add(self)
            self._task = asyncio.ensure_future(self._campaign())

    async def _campaign(self) -> None:
        pause = 0.1
        while True:
            try:
                lease = await self.client.try_acquire(
                    self.resource, self.ttl, wait=self.wait, session_bound=self.session_bound, holder=self.name
                )
            except (LeaseError, psycopg.Error, OSError):
                await asyncio.sleep(pause)  # the server is unreachable or refused: try again
                pause = min(pause * 2, self.ttl)
                continue
            pause = 0.1
            if lease is None:
                continue
            self.lease = lease
            self.terms += 1
            self._elected.set()
            if self.on_elected is not None:
                _run_callback(self.on_elected, lease)
            loss = await lease.wait_lost()
            self._elected.clear()
            if loss is not None and self.on_lost is not None:
                _run_callback(self.on_lost, lease, loss)
            # Released by the user or lost: campaign again (stop() ends the campaign).

    async def wait_elected(self) -> Optional[AsyncLease]:
        """Returns the lease of the current term once this candidate leads; None once the
        election is stopped."""
        while not self._stopped.is_set():
            elected = asyncio.ensure_future(self._elected.wait())
            stopped = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait({elected, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                elected.cancel()
                stopped.cancel()
            lease = self.lease
            if lease is not None and lease.held:
                return lease
            if not self._stopped.is_set():
                await asyncio.sleep(0.01)
        return None

    async def leader(self) -> Optional[LeaseInfo]:
        """The current leader (`lease_info`), or None."""
        return await self.client.info(self.resource)

    async def stop(self) -> Optional[int]:
        """Stops campaigning and resigns; returns the token released, or None if it did not lead."""
        self.client._elections.discard(self)
        self._stopped.set()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        lease, self.lease = self.lease, None
        self._elected.clear()
        if lease is not None and not lease.released:
            # Released whatever the client's clock says: a lease past its local deadline may
            # still be held on the server, and the successor should not wait for its ttl.
            token = lease.token
            return token if await lease.release() else None
        return None

    async def __aenter__(self) -> "AsyncElection":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


Callback = Union[Callable[..., Any], Callable[..., Awaitable[Any]]]
