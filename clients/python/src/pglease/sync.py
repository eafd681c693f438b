"""The blocking client: the asyncio client run on an event loop in a daemon thread of its own, so
renewals go on whatever the calling threads do. Callbacks run on a second thread, in order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import queue
import threading
from typing import Any, Awaitable, Callable, Iterator, Optional, Sequence, TypeVar

import psycopg

from .core import (
    AsyncClaim,
    AsyncClient,
    AsyncElection,
    AsyncLease,
    EventCallback,
    LeaseEvent,
    LeaseInfo,
    Loss,
    Seconds,
    _check_fence_target,
    _ASSERT,
    _CHECK,
)
from .errors import LeaseLost, LeaseUnavailable, LeaseUsageError, map_error

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pglease", daemon=True)
        self.thread.start()
        self.stopped = False
        self.pending: set[concurrent.futures.Future[Any]] = set()
        self.lock = threading.Lock()

    def run(self, coroutine: Awaitable[T]) -> T:
        with self.lock:
            if self.stopped:
                if inspect.iscoroutine(coroutine):
                    coroutine.close()
                raise LeaseUsageError("the client is closed")
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
            self.pending.add(future)
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C): cancel the call in the loop and wait for it to clean up.
            if not future.done():
                future.cancel()
                try:
                    future.result(timeout=15)
                except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError, Exception):
                    pass
            raise
        finally:
            with self.lock:
                self.pending.discard(future)

    def cancel_pending(self) -> None:
        """Cancels the calls other threads wait for (they raise CancelledError at once; the
        cancellation cleans up in the loop)."""
        with self.lock:
            pending = list(self.pending)
        for future in pending:
            future.cancel()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
        self.cancel_pending()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class _Callbacks:
    """Runs user callbacks one at a time, in the order they were due, on a thread of their own,
    so that a slow callback never holds up renewals (and events arrive in order)."""

    def __init__(self) -> None:
        self.queue: "queue.SimpleQueue[Optional[tuple[Callable[..., Any], tuple[Any, ...]]]]" = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="pglease-callbacks", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            callback, args = item
            try:
                callback(*args)
            except Exception:
                logging.getLogger("pglease").exception("callback %r failed", callback)

    def __call__(self, callback: Callable[..., Any], *args: Any) -> None:
        self.queue.put((callback, args))

    def stop(self) -> None:
        self.queue.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join(10)


class Lease:
    """A lease held by a `Client`, renewed in the background until released or lost.

    `lost` is a threading.Event set when the lease ends (lost or released); `loss` says why it
    was lost. Use `fence(conn)` inside the transaction of each protected write."""

    def __init__(self, client: "Client", inner: AsyncLease) -> None:
        self._client = client
        self._inner = inner
        inner._facade = self  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return repr(self._inner).replace("AsyncLease", "Lease")

    resource = property(lambda self: self._inner.resource)
    token = property(lambda self: self._inner.token)
    holder = property(lambda self: self._inner.holder)
    ttl = property(lambda self: self._inner.ttl)
    session_bound = property(lambda self: self._inner.session_bound)
    lost = property(lambda self: self._inner.lost)
    loss = property(lambda self: self._inner.loss)
    released = property(lambda self: self._inner.released)
    held = property(lambda self: self._inner.held)
    remaining = property(lambda self: self._inner.remaining)
    valid_until = property(lambda self: self._inner.valid_until)
    backend_pid = property(lambda self: self._inner.backend_pid)

    def ensure_held(self) -> None:
        """Raises LeaseLost unless the lease is held by the client's reckoning."""
        self._inner.ensure_held()

    def wait_lost(self, timeout: Optional[float] = None) -> Optional[Loss]:
        """Blocks until the lease ends (or `timeout`); returns its loss (None: released or still held)."""
        self._inner.lost.wait(timeout)
        return self._inner.loss

    def on_lost(self, callback: Callable[["Lease", Loss], Any]) -> None:
        """Calls `callback(lease, loss)` on the client's callback thread once the lease is lost."""
        self._client._loop.loop.call_soon_threadsafe(
            self._inner.on_lost, lambda _inner, loss: self._client._callbacks(callback, self, loss)
        )

    def fence(self, target: Any) -> None:
        """`SELECT lease_assert(resource, token)` on `target`, a psycopg Connection or Cursor in a
        transaction of the caller's: the protected writes after it commit only together with the
        check. Raises LeaseLost (and marks the lease lost) when the token no longer holds."""
        _check_fence_target(target)
        self._inner.ensure_held()
        try:
            target.execute(_ASSERT, (self.resource, self.token))
        except psycopg.Error as error:
            mapped = map_error(error, fencing=True)
            if isinstance(mapped, LeaseLost):
                inner = self._inner

                async def lose() -> Optional[Loss]:
                    inner._lose(Loss("fence", "lease_assert refused the token"))
                    return inner.loss

                mapped.loss = self._client._loop.run(lose())
            raise mapped from error

    def check(self, target: Any) -> bool:
        """`lease_check(resource, token)` on `target`: the fence as a boolean."""
        if not self._inner.held:
            return False
        try:
            held = bool(target.execute(_CHECK, (self.resource, self.token)).fetchone()[0])
        except psycopg.Error as error:
            raise map_error(error) from error
        if not held:
            self._client._loop.loop.call_soon_threadsafe(self._inner._lose, Loss("fence", "lease_check returned false"))
        return held

    def release(self) -> bool:
        """Stops renewing and releases: True if the server released it, False if it was not held."""
        return self._client._loop.run(self._inner.release())

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        lost = self._inner.loss
        self.release()
        if error is None and lost is not None:
            raise LeaseLost(f"lease on {self.resource!r} (token {self.token}) was lost: {lost}", loss=lost)


def _facade(client: "Client", inner: AsyncLease) -> Lease:
    return getattr(inner, "_facade", None) or Lease(client, inner)


class Claim:
    """The leases of one `claim()`, renewed together; `with` releases what is left on exit."""

    def __init__(self, client: "Client", inner: AsyncClaim) -> None:
        self._client = client
        self._inner = inner
        self.leases = [_facade(client, lease) for lease in inner.leases]

    def __iter__(self) -> Iterator[Lease]:
        return iter(self.leases)

    def __len__(self) -> int:
        return len(self.leases)

    def __getitem__(self, index: int) -> Lease:
        return self.leases[index]

    def release(self) -> list[bool]:
        return self._client._loop.run(self._inner.release())

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Election:
    """A leader election (see `AsyncElection`): `start()` campaigns in the background;
    `on_elected(lease)`, `on_lost(lease, loss)` and `on_change(event)` run on the client's
    callback thread, one at a time and in order; `wait_elected()` blocks until this candidate leads; `stop()` resigns."""

    def __init__(self, client: "Client", inner: AsyncElection) -> None:
        self._client = client
        self._inner = inner

    resource = property(lambda self: self._inner.resource)
    name = property(lambda self: self._inner.name)
    terms = property(lambda self: self._inner.terms)
    is_leader = property(lambda self: self._inner.is_leader)

    @property
    def lease(self) -> Optional[Lease]:
        inner = self._inner.lease
        return None if inner is None else _facade(self._client, inner)

    def start(self) -> "Election":
        self._client._loop.run(self._inner.start())
        return self

    def wait_elected(self, timeout: Optional[float] = None) -> Optional[Lease]:
        """The lease of the current term once this candidate leads; None after `timeout`."""

        async def waiting() -> Optional[AsyncLease]:
            try:
                return await asyncio.wait_for(self._inner.wait_elected(), timeout)
            except asyncio.TimeoutError:
                return None

        inner = self._client._loop.run(waiting())
        return None if inner is None else _facade(self._client, inner)

    def leader(self) -> Optional[LeaseInfo]:
        return self._client._loop.run(self._inner.leader())

    def stop(self) -> Optional[int]:
        """Stops campaigning and resigns; returns the token released, or None if it did not lead."""
        return self._client._loop.run(self._inner.stop())

    def __enter__(self) -> "Election":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Client:
    """Leases over psycopg 3, blocking API. Same arguments as `AsyncClient`.

        with Client(dsn) as client, client.lease("job:42", ttl=30) as lease:
            with conn.transaction():
                lease.fence(conn)
                conn.execute("UPDATE jobs SET state = 'done' WHERE id = 42")
    """

    def __init__(self, conninfo: str = "", **options: Any) -> None:
        self._loop = _Loop()
        self._callbacks = _Callbacks()

        async def make() -> AsyncClient:
            return AsyncClient(conninfo, **options)

        try:
            self._async = self._loop.run(make())
        except BaseException:
            self._loop.stop()
            self._callbacks.stop()
            raise
        self._closed = False

    holder = property(lambda self: self._async.holder)

    def __enter__(self) -> "Client":
        self._loop.run(self._async.open())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Releases every lease still held and closes every connection."""
        if self._closed:
            return
        self._closed = True
        # Calls other threads are blocked in (a waiting acquire, wait_elected) end now, and
        # cleanly, before the leases are released and the loop stops.
        self._loop.cancel_pending()
        try:
            self._loop.run(self._async.close())
        finally:
            self._loop.stop()
            self._callbacks.stop()

    def _lost_callback(self, on_lost: Optional[Callable[[Lease, Loss], Any]]) -> Optional[Callable[[AsyncLease, Loss], Any]]:
        if on_lost is None:
            return None
        return lambda inner, loss: self._callbacks(on_lost, _facade(self, inner), loss)

    def try_acquire(
        self, resource: str, ttl: Seconds = 30.0, *, wait: Optional[Seconds] = None, session_bound: bool = False,
        holder: Optional[str] = None, on_lost: Optional[Callable[[Lease, Loss], Any]] = None,
    ) -> Optional[Lease]:
        """The lease, renewed in the background, or None if another holder has it (after `wait`)."""
        inner = self._loop.run(self._async.try_acquire(
            resource, ttl, wait=wait, session_bound=session_bound, holder=holder, on_lost=self._lost_callback(on_lost)
        ))
        return None if inner is None else _facade(self, inner)

    def lease(
        self, resource: str, ttl: Seconds = 30.0, *, wait: Optional[Seconds] = None, session_bound: bool = False,
        holder: Optional[str] = None, on_lost: Optional[Callable[[Lease, Loss], Any]] = None,
    ) -> Lease:
        """Like try_acquire, but raises LeaseUnavailable instead of returning None: for `with`."""
        lease = self.try_acquire(resource, ttl, wait=wait, session_bound=session_bound, holder=holder, on_lost=on_lost)
        if lease is None:
            raise LeaseUnavailable(f"lease on {resource!r} is held by another holder")
        return lease

    def claim(
        self, resources: Sequence[str], ttl: Seconds = 30.0, *, max_count: int = 1, session_bound: bool = False,
        snapshot_consistent: bool = False, holder: Optional[str] = None,
        on_lost: Optional[Callable[[Lease, Loss], Any]] = None,
    ) -> Claim:
        """`lease_acquire_any` over `resources`; see AsyncClient.claim."""
        inner = self._loop.run(self._async.claim(
            resources, ttl, max_count=max_count, session_bound=session_bound,
            snapshot_consistent=snapshot_consistent, holder=holder, on_lost=self._lost_callback(on_lost),
        ))
        return Claim(self, inner)

    def election(
        self, resource: str, ttl: Seconds = 10.0, *, wait: Optional[Seconds] = None, session_bound: bool = False,
        name: Optional[str] = None, on_elected: Optional[Callable[[Lease], Any]] = None,
        on_lost: Optional[Callable[[Lease, Loss], Any]] = None, on_change: Optional[EventCallback] = None,
    ) -> Election:
        """A leader election on `resource`; call `start()` (or use `with`)."""
        election = Election(self, None)  # type: ignore[arg-type]
        elected = None if on_elected is None else (lambda inner: self._callbacks(on_elected, _facade(self, inner)))
        changed = None if on_change is None else (lambda event: self._callbacks(on_change, event))

        async def make() -> AsyncElection:
            return self._async.election(
                resource, ttl, wait=wait, session_bound=session_bound, name=name, on_elected=elected,
                on_lost=self._lost_callback(on_lost), on_change=changed,
            )

        election._inner = self._loop.run(make())
        return election

    def info(self, resource: str) -> Optional[LeaseInfo]:
        """`lease_info(resource)`: who holds it now, or None."""
        return self._loop.run(self._async.info(resource))

    def watch(self, resource: str, callback: Callable[[LeaseEvent], Any]) -> Callable[[], None]:
        """Calls `callback(event)` (on the callback thread, in order) for every event of `resource`."""

        async def register() -> Callable[[], None]:
            await self._async.open()
            return self._async.watch(resource, lambda event: self._callbacks(callback, event))

        stop = self._loop.run(register())
        return lambda: self._loop.loop.call_soon_threadsafe(stop)
