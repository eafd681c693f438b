// The TypeScript client of the lease extension, on node-postgres: leases renewed in the
// background on a connection of their own, lost by the client's own monotonic clock, fenced in
// the caller's transaction; leader election and job claims. Same concepts and names as the
// Python client (clients/python).

import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { performance } from "node:perf_hooks";
import { Client as PgClient, ClientConfig } from "pg";

import { ConnectionFailed, LeaseLost, LeaseTimeout, LeaseUnavailable, LeaseUsageError, Loss, mapError } from "./errors";

export * from "./errors";

const INTERVAL = "($%::float8 * interval '1 second')";
const ACQUIRE = `SELECT lease_acquire($1, $2, ${INTERVAL.replace("%", "3")}, wait => ${INTERVAL.replace("%", "4")}, session_bound => $5)::text AS token`;
const ACQUIRE_ANY =
  `SELECT resource, token::text AS token FROM lease_acquire_any($1::text[], $2, ${INTERVAL.replace("%", "3")}, ` +
  "max_count => $4, session_bound => $5, snapshot_consistent => $6)";
const RENEW = `SELECT u.r AS resource, lease_renew(u.r, u.t, ${INTERVAL.replace("%", "1")}) AS renewed FROM unnest($2::text[], $3::bigint[]) AS u(r, t)`;
const RELEASE = "SELECT lease_release($1, $2::bigint) AS released";
const ASSERT = "SELECT lease_assert($1, $2::bigint)";
const CHECK = "SELECT lease_check($1, $2::bigint) AS held";
const INFO =
  "SELECT resource, holder, token::text AS token, owner::text AS owner, acquired_at, renewed_at, expires_at, " +
  "session_pid, application_name FROM lease_info($1)";
// Releases what an acquire or claim whose answer was lost (aborted, timed out, connection broken)
// may have been granted after all. Each attempt has a holder name of its own, so this touches
// nothing another lease object holds.
const RELEASE_ORPHAN =
  "SELECT lease_release(i.resource, i.token) FROM unnest($1::text[]) AS r(resource), lease_info(r.resource) AS i " +
  "WHERE i.holder = $2 AND i.owner = current_user AND i.token IS NOT NULL";
const ENDINGS = new Set(["released", "expired", "revoked"]);

/** Anything with node-postgres's `query(text, values)`: a Client or a PoolClient in a transaction. */
export interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: any[] }>;
}

export interface LeaseClientOptions extends ClientConfig {
  /** The name in the leases this client takes (default host:pid:random). */
  holder?: string;
  /** LISTEN for lease events (default true); turn off behind a transaction pooler. */
  listen?: boolean;
  /** The event channel (lease.notify_channel), default "lease_events". */
  channel?: string;
  /** Seconds allowed for connecting and for every call but a waiting acquire (default 10). */
  timeout?: number;
  applicationName?: string;
}

export interface AcquireOptions {
  /** Seconds (default 30). */
  ttl?: number;
  /** Seconds to wait for the lease (default: do not wait). */
  wait?: number;
  sessionBound?: boolean;
  holder?: string;
  onLost?: (lease: Lease, loss: Loss) => unknown;
  /** Aborts a waiting acquire: the wait is cancelled on the server. */
  signal?: AbortSignal;
}

export interface ClaimOptions {
  ttl?: number;
  maxCount?: number;
  sessionBound?: boolean;
  snapshotConsistent?: boolean;
  holder?: string;
  onLost?: (lease: Lease, loss: Loss) => unknown;
  /** Aborts the claim: a statement running is cancelled on the server, and leases granted by an
   * answer that came too late are released. */
  signal?: AbortSignal;
}

export interface LeaseInfo {
  resource: string;
  holder: string;
  token: bigint | null;
  owner: string;
  acquiredAt: Date;
  renewedAt: Date;
  expiresAt: Date;
  sessionPid: number | null;
  applicationName: string | null;
}

export interface LeaseEvent {
  event: string;
  resource: string;
  holder: string;
  token: bigint;
  seq?: number;
  reason?: string;
  expiresAt?: string;
  at?: string;
}

function seconds(value: number | undefined, name: string, fallback: number, positive = true): number {
  const number = value ?? fallback;
  if (typeof number !== "number" || !Number.isFinite(number) || number < 0 || (positive && number === 0)) {
    throw new RangeError(`${name} must be a ${positive ? "positive" : "non-negative"} number of seconds, not ${String(value)}`);
  }
  return number;
}

function defaultHolder(): string {
  return `${hostname()}:${process.pid}:${randomBytes(3).toString("hex")}`;
}

// Numbers the holder names of the lease objects of this process ("NAME#N").
let serial = 0;

/** The holder name one acquire (or one claim) uses on the server: the client's name plus a number
 * unique in this process. Each lease object is thus a holder of its own: two callers sharing a
 * client never share a lease, and a second acquire by the same client waits or gets null like
 * any other holder's. */
function leaseHolder(name: string): string {
  serial += 1;
  return `${name}#${serial}`;
}

/** A pause that does not keep the process alive. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)).unref());
}

/** A pause with a way to end it early (its timer cleared). */
function timer(ms: number): { done: Promise<void>; clear: () => void } {
  let handle: NodeJS.Timeout | undefined;
  let finish!: () => void;
  const done = new Promise<void>((resolve) => {
    finish = resolve;
    handle = setTimeout(resolve, Math.max(0, ms));
    handle.unref();
  });
  return { done, clear: () => (clearTimeout(handle), finish()) };
}

function callSafely(callback: (...args: any[]) => unknown, ...args: unknown[]): void {
  try {
    const result = callback(...args);
    if (result && typeof (result as Promise<unknown>).then === "function") {
      (result as Promise<unknown>).then(undefined, (error) => console.error("pg-lease: callback failed", error));
    }
  } catch (error) {
    console.error("pg-lease: callback failed", error);
  }
}

/** A node-postgres connection of the client's own, and whether it is known to be broken. */
class Conn {
  broken = false;
  constructor(readonly pg: PgClient) {
    pg.on("error", () => (this.broken = true));
    pg.on("end", () => (this.broken = true));
  }

  get pid(): number | null {
    return this.broken ? null : ((this.pg as unknown as { processID: number | null }).processID ?? null);
  }

  /** Destroys the socket without waiting for the server: a stalled call on it fails at once. */
  cut(): void {
    this.broken = true;
    (this.pg as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
  }

  async close(timeoutMs: number): Promise<void> {
    if (this.broken) return this.cut();
    this.broken = true;
    const ended = this.pg.end().catch(() => undefined);
    const limit = timer(timeoutMs);
    let timedOut = false;
    await Promise.race([ended, limit.done.then(() => (timedOut = true))]);
    limit.clear();
    if (timedOut) this.cut();
  }

  /** One statement, or LeaseTimeout after `timeoutMs` with the connection cut (cancelling would
   * need the server, which is what does not answer). */
  async query(text: string, values: unknown[], timeoutMs: number): Promise<any[]> {
    const running = this.pg.query(text, values);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new LeaseTimeout(`no answer from the server within ${(timeoutMs / 1000).toFixed(3)} s`)), Math.max(0, timeoutMs));
    });
    try {
      return (await Promise.race([running, timeout])).rows;
    } catch (error) {
      if (error instanceof LeaseTimeout) {
        running.catch(() => undefined);
        this.cut();
      } else if (mapError(error) instanceof ConnectionFailed) {
        this.broken = true;
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * A lease held by a LeaseClient, renewed in the background until released or lost.
 *
 * Loss is reported by `signal` (an AbortSignal, aborted with a LeaseLost), `lost` (a promise of
 * the loss), `onLost` callbacks, and `held`. `await using` releases it.
 */
export class Lease implements AsyncDisposable {
  loss: Loss | null = null;
  released = false;
  readonly signal: AbortSignal;
  /** Resolves when the lease ends: with its loss, or null if it was released. */
  readonly lost: Promise<Loss | null>;
  /** @internal */ keeper: Keeper | null = null;
  private readonly controller = new AbortController();
  private resolveLost!: (loss: Loss | null) => void;
  private callbacks: Array<(lease: Lease, loss: Loss) => unknown> = [];

  constructor(
    readonly client: LeaseClient,
    readonly resource: string,
    readonly token: bigint,
    readonly holder: string,
    /** Seconds. */ readonly ttl: number,
    readonly sessionBound: boolean,
    private until: number,
  ) {
    this.signal = this.controller.signal;
    this.lost = new Promise((resolve) => (this.resolveLost = resolve));
  }

  /** performance.now() value (ms) until which the lease is surely held, unless revoked: the send
   * time of the last successful acquire or renewal plus the ttl. */
  get validUntil(): number {
    return this.until;
  }

  /** Not lost, not released, and before validUntil on the monotonic clock. */
  get held(): boolean {
    return this.loss === null && !this.released && performance.now() < this.until;
  }

  /** The server process of the connection that renews this lease (null while reconnecting). */
  get backendPid(): number | null {
    return this.keeper?.conn?.pid ?? null;
  }

  onLost(callback: (lease: Lease, loss: Loss) => unknown): void {
    if (this.loss) queueMicrotask(() => callSafely(callback, this, this.loss));
    else this.callbacks.push(callback);
  }

  /** Throws LeaseLost unless `held`. */
  ensureHeld(): void {
    if (!this.held) throw new LeaseLost(this.describe(), this.loss);
  }

  private describe(): string {
    const what = `lease on ${JSON.stringify(this.resource)} (token ${this.token})`;
    if (this.released) return `${what} was released`;
    return this.loss ? `${what} was lost: ${this.loss.cause}: ${this.loss.detail}` : `${what} ran out by the client's clock`;
  }

  /** @internal */
  lose(loss: Loss, wake = true): void {
    if (this.loss || this.released) return;
    this.loss = loss;
    this.keeper?.drop(this, wake);
    this.client.forget(this);
    this.controller.abort(new LeaseLost(this.describe(), loss));
    this.resolveLost(loss);
    const callbacks = this.callbacks;
    this.callbacks = [];
    for (const callback of callbacks) callSafely(callback, this, loss);
  }

  /** @internal */
  renewed(sent: number): void {
    this.until = Math.max(this.until, sent + this.ttl * 1000);
  }

  /**
   * Fences the caller's own transaction: `SELECT lease_assert(resource, token)` on `target`, a
   * client inside BEGIN ... COMMIT. From then on no other holder can be granted the resource
   * until that transaction ends, so the writes after it commit only together with the check.
   * Throws LeaseLost (and marks the lease lost) if the token no longer holds; without a round
   * trip if the client already knows. (On a Pool, whose every query is a transaction of its
   * own, the fence would protect nothing: use a client of the pool, in a transaction.)
   */
  async fence(target: Queryable): Promise<void> {
    if (typeof (target as { totalCount?: unknown }).totalCount === "number") {
      throw new LeaseUsageError("fence() needs a client in a transaction, not a Pool: on a Pool the check would commit on its own");
    }
    this.ensureHeld();
    try {
      await target.query(ASSERT, [this.resource, this.token.toString()]);
    } catch (error) {
      const mapped = mapError(error, true);
      if (mapped instanceof LeaseLost) {
        this.lose({ cause: "fence", detail: "lease_assert refused the token", fromEvent: false });
        mapped.loss = this.loss;
      }
      throw mapped;
    }
  }

  /** `lease_check(resource, token)` on `target`: the same fence as a boolean. */
  async check(target: Queryable): Promise<boolean> {
    if (!this.held) return false;
    let held: boolean;
    try {
      held = (await target.query(CHECK, [this.resource, this.token.toString()])).rows[0].held === true;
    } catch (error) {
      throw mapError(error);
    }
    if (!held) this.lose({ cause: "fence", detail: "lease_check returned false", fromEvent: false });
    return held;
  }

  /** Stops renewing and releases: true if the server released it, false if it was not held. */
  async release(): Promise<boolean> {
    if (this.released) return false;
    const knownGone = this.loss !== null && !["deadline", "error", "closed"].includes(this.loss.cause);
    this.released = true;
    this.client.forget(this);
    const keeper = this.keeper;
    this.keeper = null;
    keeper?.drop(this, false);
    if (!this.loss) this.controller.abort(new LeaseLost(this.describe(), null, null));
    this.resolveLost(this.loss);
    if (knownGone) return false;
    return this.client.releaseLease(this, keeper);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

/** One connection of the client's own that renews a group of leases (one lease, or those of one
 * claim) every third of the ttl, and releases them. Nothing else runs on it. @internal */
class Keeper {
  readonly leases = new Map<string, Lease>();
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(
    readonly client: LeaseClient,
    public conn: Conn | null,
    readonly ttl: number,
    readonly sessionBound: boolean,
    private sent: number,
  ) {
    if (sessionBound && conn) {
      // The leases end with this connection: say so as soon as it ends, not at the next renewal.
      const ended = () => {
        if (!this.closed) this.loseAll({ cause: "session_ended", detail: "the connection the lease was bound to ended", fromEvent: false });
      };
      conn.pg.on("end", ended);
      conn.pg.on("error", ended);
    }
  }

  start(leases: Lease[]): void {
    for (const lease of leases) {
      this.leases.set(lease.resource, lease);
      lease.keeper = this;
    }
    this.schedule();
  }

  private schedule(): void {
    clearTimeout(this.timer);
    if (this.leases.size === 0) {
      void this.close();
      return;
    }
    this.timer = setTimeout(() => void this.round().finally(() => this.schedule()), Math.max(0, this.sent + (this.ttl * 1000) / 3 - performance.now()));
  }

  drop(lease: Lease, wake: boolean): void {
    if (this.leases.get(lease.resource) === lease) this.leases.delete(lease.resource);
    if (this.leases.size === 0) {
      clearTimeout(this.timer);
      if (wake) void this.close();
    }
  }

  private loseAll(loss: Loss): void {
    for (const lease of [...this.leases.values()]) lease.lose(loss);
  }

  /** Runs `work` after every statement queued before it on this connection. */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    const next = this.chain.then(work, work);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async round(): Promise<void> {
    const ttlMs = this.ttl * 1000;
    const deadline = this.sent + ttlMs;
    let pause = 50;
    while (this.leases.size > 0 && !this.closed) {
      const now = performance.now();
      if (now >= deadline) {
        this.loseAll({ cause: "deadline", detail: `not renewed within the ttl (${this.ttl} s) of the last renewal sent`, fromEvent: false });
        return;
      }
      if (!this.conn || this.conn.broken) {
        if (this.sessionBound) {
          this.loseAll({ cause: "session_ended", detail: "the connection the lease was bound to ended", fromEvent: false });
          return;
        }
        try {
          const fresh = await this.client.connect(deadline - now);
          if (this.closed) {
            await fresh.close(this.client.timeoutMs);
            return;
          }
          this.conn = fresh;
        } catch {
          await sleep(Math.min(pause, deadline - performance.now()));
          pause = Math.min(pause * 2, ttlMs / 6);
          continue;
        }
      }
      const sent = performance.now();
      const resources = [...this.leases.keys()];
      const tokens = resources.map((r) => this.leases.get(r)!.token.toString());
      const conn = this.conn;
      const unanswered: Loss = { cause: "deadline", detail: `a renewal was not answered within the ttl (${this.ttl} s)`, fromEvent: false };
      // A release on this connection may be running: the wait for it counts against the deadline
      // too, and so does the statement once its turn comes.
      let abandoned = false;
      const limit = timer(deadline - sent);
      let rows: any[];
      try {
        const renewal = this.exclusive(() => {
          if (abandoned) return Promise.reject(new LeaseTimeout("the renewal's turn came after its deadline"));
          return conn.query(RENEW, [this.ttl, resources, tokens], deadline - performance.now());
        });
        renewal.catch(() => undefined);
        const late = limit.done.then(() => {
          abandoned = true;
          throw new LeaseTimeout("no turn on the connection before the deadline");
        });
        late.catch(() => undefined);
        rows = await Promise.race([renewal, late]);
      } catch (error) {
        if (error instanceof LeaseTimeout) {
          this.loseAll(unanswered);
          return;
        }
        if (conn.broken) continue;
        this.loseAll({ cause: "error", detail: `renewal failed: ${mapError(error).message}`, fromEvent: false });
        return;
      } finally {
        limit.clear();
      }
      if (performance.now() >= deadline) {
        // Answered, but too late (a stalled event loop): the lease may have expired meanwhile.
        this.loseAll(unanswered);
        return;
      }
      this.sent = sent;
      for (const row of rows) {
        const lease = this.leases.get(row.resource);
        if (!lease) continue;
        if (row.renewed) lease.renewed(sent);
        else lease.lose({ cause: "refused", detail: "lease_renew returned false (expired, revoked or taken over)", fromEvent: false });
      }
      return;
    }
  }

  /** A statement on this connection after any renewal in progress, bounded by the client's timeout. */
  call(text: string, values: unknown[]): Promise<any[]> {
    return this.exclusive(async () => {
      if (!this.conn || this.conn.broken) throw new ConnectionFailed("the lease's connection is closed");
      return this.conn.query(text, values, this.client.timeoutMs);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    await this.exclusive(async () => {
      const conn = this.conn;
      this.conn = null;
      await conn?.close(this.client.timeoutMs);
    });
  }
}

/** LISTENs on the event channel on a connection of its own; reconnects with growing pauses. */
class Listener {
  private conn: Conn | null = null;
  private stopped = false;
  private wake: (() => void) | null = null;
  private ready: Promise<void>;
  private setReady!: () => void;

  constructor(private readonly client: LeaseClient) {
    this.ready = new Promise((resolve) => (this.setReady = resolve));
    void this.run();
  }

  async started(timeoutMs: number): Promise<void> {
    const limit = timer(timeoutMs);
    await Promise.race([this.ready, limit.done]);
    limit.clear();
  }

  private async run(): Promise<void> {
    let pause = 100;
    while (!this.stopped) {
      try {
        const conn = await this.client.connect(this.client.timeoutMs);
        if (this.stopped) {
          await conn.close(this.client.timeoutMs);
          return;
        }
        this.conn = conn;
        const ended = new Promise<void>((resolve) => {
          conn.pg.on("error", () => resolve());
          conn.pg.on("end", () => resolve());
        });
        conn.pg.on("notification", (message) => {
          if (message.payload) this.client.dispatch(message.payload);
        });
        await conn.query(`LISTEN "${this.client.channel.replace(/"/g, '""')}"`, [], this.client.timeoutMs);
        this.setReady();
        pause = 100;
        await ended;
      } catch {
        // reconnect below
      }
      this.conn?.cut();
      this.conn = null;
      if (!this.stopped) {
        const pausing = timer(pause);
        this.wake = pausing.clear;
        await pausing.done;
        this.wake = null;
        pause = Math.min(pause * 2, 5000);
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.conn?.close(this.client.timeoutMs);
  }
}

/**
 * Leases over node-postgres. Options are pg's ClientConfig plus `holder`, `listen`, `channel`,
 * `timeout` (seconds) and `applicationName`. Every statement runs alone in autocommit mode on
 * unnamed statements, so the client works behind PgBouncer in transaction pooling mode; there
 * pass `listen: false` and leave `sessionBound` off.
 */
export class LeaseClient implements AsyncDisposable {
  readonly holder: string;
  readonly listen: boolean;
  readonly channel: string;
  readonly timeoutMs: number;
  private readonly config: ClientConfig;
  private closing = false;
  private listener: Listener | null = null;
  private readonly held = new Map<string, Set<Lease>>();
  private readonly watchers = new Map<string, Array<(event: LeaseEvent) => unknown>>();
  private readonly elections = new Set<Election>();

  constructor(options: LeaseClientOptions = {}) {
    const { holder, listen, channel, timeout, applicationName, ...config } = options;
    this.holder = holder ?? defaultHolder();
    this.listen = listen ?? true;
    this.channel = channel ?? "lease_events";
    this.timeoutMs = seconds(timeout, "timeout", 10) * 1000;
    this.config = { ...config, application_name: (applicationName ?? config.application_name ?? `pg-lease ${this.holder}`).slice(0, 63) };
  }

  /** Starts the event listener (with listen: true); acquiring does it too. */
  async open(): Promise<void> {
    if (this.closing) throw new LeaseUsageError("the client is closed");
    if (this.listen && !this.listener) {
      this.listener = new Listener(this);
      await this.listener.started(this.timeoutMs);
    }
  }

  /** Stops elections, releases every lease still held, closes every connection. */
  async close(): Promise<void> {
    if (this.closing) return;
    for (const election of [...this.elections]) await election.stop();
    for (const leases of [...this.held.values()]) {
      for (const lease of [...leases]) {
        // A loss first, so that the signal, `lost` and onLost tell the work; then the release on
        // the server, so that the next holder need not wait for the ttl.
        lease.lose({ cause: "closed", detail: "the client was closed", fromEvent: false }, false);
        try {
          await lease.release();
        } catch {
          // it expires at its ttl
        }
      }
    }
    this.closing = true;
    await this.listener?.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal */
  async connect(timeoutMs: number): Promise<Conn> {
    const pg = new PgClient({ ...this.config, connectionTimeoutMillis: Math.max(1, Math.min(timeoutMs, this.timeoutMs)) });
    pg.on("error", () => undefined); // a broken idle connection must not crash the process
    try {
      await pg.connect();
    } catch (error) {
      pg.end().catch(() => undefined);
      throw mapError(error);
    }
    return new Conn(pg);
  }

  /** @internal */
  forget(lease: Lease): void {
    const key = `${lease.resource}\u0000${lease.token}`;
    const leases = this.held.get(key);
    leases?.delete(lease);
    if (leases && leases.size === 0) this.held.delete(key);
  }

  private remember(lease: Lease): void {
    const key = `${lease.resource}\u0000${lease.token}`;
    if (!this.held.has(key)) this.held.set(key, new Set());
    this.held.get(key)!.add(lease);
  }

  /** @internal */
  dispatch(payload: string): void {
    let event: LeaseEvent;
    try {
      const data = JSON.parse(payload);
      event = { event: data.event, resource: data.resource, holder: data.holder, token: BigInt(data.token), seq: data.seq, reason: data.reason, expiresAt: data.expires_at, at: data.at };
    } catch {
      return;
    }
    if (ENDINGS.has(event.event)) {
      const cause = (event.reason === "session_ended" ? "session_ended" : event.event) as Loss["cause"];
      for (const lease of [...(this.held.get(`${event.resource}\u0000${event.token}`) ?? [])]) {
        lease.lose({ cause, detail: `the server announced the lease ${event.event}`, fromEvent: true });
      }
    }
    for (const callback of [...(this.watchers.get(event.resource) ?? [])]) callSafely(callback, event);
  }

  /** Calls `callback(event)` for every event of `resource` (needs listen: true); returns a stop function. */
  watch(resource: string, callback: (event: LeaseEvent) => unknown): () => void {
    if (!this.listen) throw new LeaseUsageError("watch() needs a client with listen: true");
    if (!this.watchers.has(resource)) this.watchers.set(resource, []);
    this.watchers.get(resource)!.push(callback);
    void this.open().catch(() => undefined);
    return () => {
      const callbacks = this.watchers.get(resource) ?? [];
      const index = callbacks.indexOf(callback);
      if (index >= 0) callbacks.splice(index, 1);
    };
  }

  /** `lease_info(resource)`: who holds it now, or null when it is free. */
  async info(resource: string): Promise<LeaseInfo | null> {
    const conn = await this.connect(this.timeoutMs);
    try {
      const rows = await conn.query(INFO, [resource], this.timeoutMs);
      if (rows.length === 0) return null;
      const row = rows[0];
      return {
        resource: row.resource, holder: row.holder, token: row.token === null ? null : BigInt(row.token), owner: row.owner,
        acquiredAt: row.acquired_at, renewedAt: row.renewed_at, expiresAt: row.expires_at, sessionPid: row.session_pid,
        applicationName: row.application_name,
      };
    } catch (error) {
      throw mapError(error);
    } finally {
      await conn.close(this.timeoutMs);
    }
  }

  /** `lease_acquire`: the lease, renewed in the background until released or lost, or null when
   * another holder has it (after waiting up to `wait` seconds). */
  async tryAcquire(resource: string, options: AcquireOptions = {}): Promise<Lease | null> {
    const ttl = seconds(options.ttl, "ttl", 30);
    const wait = seconds(options.wait, "wait", 0, false);
    const holder = leaseHolder(options.holder ?? this.holder);
    const sessionBound = options.sessionBound ?? false;
    options.signal?.throwIfAborted();
    await this.open();
    const conn = await this.connect(this.timeoutMs);
    let sent = performance.now();
    let token: bigint | null = null;
    const cancel = () => (this.cancelRequest(conn), undefined);
    options.signal?.addEventListener("abort", cancel, { once: true });
    if (options.signal?.aborted) {
      // Aborted while connecting, before the listener was there: nothing was sent.
      options.signal.removeEventListener("abort", cancel);
      await conn.close(this.timeoutMs);
      throw options.signal.reason;
    }
    try {
      const rows = await conn.query(ACQUIRE, [resource, holder, ttl, wait || null, sessionBound], this.timeoutMs + wait * 1000);
      token = rows[0].token === null ? null : BigInt(rows[0].token);
      if (token !== null && wait > 0) {
        // The grant came at some moment of the wait: renew at once so that the client's deadline
        // counts from a send time it knows.
        sent = performance.now();
        const renewed = await conn.query(RENEW, [ttl, [resource], [token.toString()]], this.timeoutMs);
        if (!renewed[0]?.renewed) token = null;
      }
    } catch (error) {
      await conn.close(this.timeoutMs);
      const mapped = mapError(error);
      if (options.signal?.aborted || mapped instanceof LeaseTimeout || mapped instanceof ConnectionFailed) {
        // The answer is lost, not necessarily the grant: give it back.
        await this.releaseOrphans([resource], holder);
      }
      if (options.signal?.aborted) throw options.signal.reason;
      throw mapped;
    } finally {
      options.signal?.removeEventListener("abort", cancel);
    }
    if (options.signal?.aborted) {
      // Aborted just as the grant came: give it back.
      if (token !== null) await conn.query(RELEASE, [resource, token.toString()], this.timeoutMs).catch(() => undefined);
      await conn.close(this.timeoutMs);
      throw options.signal.reason;
    }
    if (token === null) {
      await conn.close(this.timeoutMs);
      return null;
    }
    const lease = new Lease(this, resource, token, holder, ttl, sessionBound, sent + ttl * 1000);
    if (options.onLost) lease.onLost(options.onLost);
    this.remember(lease);
    new Keeper(this, conn, ttl, sessionBound, sent).start([lease]);
    return lease;
  }

  /** Like tryAcquire, but throws LeaseUnavailable instead of returning null: for `await using`. */
  async lease(resource: string, options: AcquireOptions = {}): Promise<Lease> {
    const lease = await this.tryAcquire(resource, options);
    if (!lease) throw new LeaseUnavailable(`lease on ${JSON.stringify(resource)} is held by another holder`);
    return lease;
  }

  /** The callback form: acquires, runs `work(lease, signal)` (the signal aborts on loss), releases.
   * Throws LeaseLost if the lease was lost meanwhile, whatever `work` did. */
  async withLease<T>(resource: string, options: AcquireOptions, work: (lease: Lease, signal: AbortSignal) => Promise<T>): Promise<T> {
    const lease = await this.lease(resource, options);
    try {
      const result = await work(lease, lease.signal);
      if (lease.loss) throw new LeaseLost(`lease on ${JSON.stringify(resource)} (token ${lease.token}) was lost: ${lease.loss.cause}`, lease.loss);
      return result;
    } catch (error) {
      if (lease.loss && !(error instanceof LeaseLost)) {
        throw new LeaseLost(`lease on ${JSON.stringify(resource)} (token ${lease.token}) was lost: ${lease.loss.cause}`, lease.loss, null, { cause: error });
      }
      throw error;
    } finally {
      await lease.release();
    }
  }

  /** `lease_acquire_any`: up to maxCount of `resources` (in order, skipping busy and held ones,
   * never waiting), renewed together on one connection; each released or lost on its own.
   * Resources this client already holds under `holder` are left out. */
  async claim(resources: string[], options: ClaimOptions = {}): Promise<Claim> {
    const ttl = seconds(options.ttl, "ttl", 30);
    // A holder name of the claim's own: what other lease objects of this client hold is busy to it
    // like anybody else's, so concurrent claims never return the same resource.
    const holder = leaseHolder(options.holder ?? this.holder);
    const sessionBound = options.sessionBound ?? false;
    const signal = options.signal;
    signal?.throwIfAborted();
    await this.open();
    const conn = await this.connect(this.timeoutMs);
    const cancel = () => (this.cancelRequest(conn), undefined);
    signal?.addEventListener("abort", cancel, { once: true });
    if (signal?.aborted) {
      // Aborted while connecting, before the listener was there: nothing was sent.
      signal.removeEventListener("abort", cancel);
      await conn.close(this.timeoutMs);
      throw signal.reason;
    }
    const sent = performance.now();
    let rows: any[];
    try {
      rows = await conn.query(ACQUIRE_ANY, [resources, holder, ttl, options.maxCount ?? 1, sessionBound, options.snapshotConsistent ?? false], this.timeoutMs);
    } catch (error) {
      await conn.close(this.timeoutMs);
      const mapped = mapError(error);
      if (signal?.aborted || mapped instanceof LeaseTimeout || mapped instanceof ConnectionFailed) {
        // The answer is lost, not necessarily the grants: give them back.
        await this.releaseOrphans(resources, holder);
      }
      if (signal?.aborted) throw signal.reason;
      throw mapped;
    } finally {
      signal?.removeEventListener("abort", cancel);
    }
    if (signal?.aborted) {
      // Aborted just as the answer came: give back what it granted.
      if (rows.length > 0) {
        await conn.query(RELEASE_ORPHAN, [rows.map((row) => row.resource), holder], this.timeoutMs).catch(() => this.releaseOrphans(resources, holder));
      }
      await conn.close(this.timeoutMs);
      throw signal.reason;
    }
    const leases = rows.map((row) => new Lease(this, row.resource, BigInt(row.token), holder, ttl, sessionBound, sent + ttl * 1000));
    for (const lease of leases) {
      if (options.onLost) lease.onLost(options.onLost);
      this.remember(lease);
    }
    if (leases.length > 0) new Keeper(this, conn, ttl, sessionBound, sent).start(leases);
    else await conn.close(this.timeoutMs);
    return new Claim(leases);
  }

  /** A leader election on `resource`; call start(). */
  election(resource: string, options: ElectionOptions = {}): Election {
    return new Election(this, resource, options);
  }

  /** @internal */
  track(election: Election, active: boolean): void {
    if (active) this.elections.add(election);
    else this.elections.delete(election);
  }

  /** @internal */
  async releaseLease(lease: Lease, keeper: Keeper | null): Promise<boolean> {
    if (keeper && keeper.conn && !keeper.conn.broken) {
      try {
        return (await keeper.call(RELEASE, [lease.resource, lease.token.toString()]))[0].released === true;
      } catch (error) {
        if (!(error instanceof LeaseTimeout || error instanceof ConnectionFailed || keeper.conn?.broken !== false)) throw mapError(error);
      } finally {
        if (keeper.leases.size === 0) await keeper.close();
      }
    }
    if (lease.sessionBound) return false;
    const conn = await this.connect(this.timeoutMs);
    try {
      return (await conn.query(RELEASE, [lease.resource, lease.token.toString()], this.timeoutMs))[0].released === true;
    } catch (error) {
      throw mapError(error);
    } finally {
      await conn.close(this.timeoutMs);
    }
  }

  /** Asks the server to cancel the statement running on `conn` (a CancelRequest, which PgBouncer
   * passes on too). */
  private cancelRequest(conn: Conn): void {
    const canceller = new PgClient(this.config) as unknown as { cancel(client: unknown, query: unknown): void; connection: { on(e: string, f: () => void): void } };
    canceller.connection.on("error", () => undefined);
    canceller.cancel(conn.pg, (conn.pg as unknown as { activeQuery: unknown }).activeQuery);
  }

  /** After an acquire or claim whose answer was lost: releases what the attempt's own holder name
   * holds among `resources` (no lease object knows it). */
  private async releaseOrphans(resources: string[], holder: string): Promise<void> {
    try {
      const conn = await this.connect(this.timeoutMs);
      try {
        await conn.query(RELEASE_ORPHAN, [resources, holder], this.timeoutMs);
      } finally {
        await conn.close(this.timeoutMs);
      }
    } catch {
      // it expires at its ttl
    }
  }
}

/** The leases one claim() got, renewed together. Iterable; `await using` releases what is left. */
export class Claim implements AsyncDisposable, Iterable<Lease> {
  constructor(readonly leases: Lease[]) {}
  get length(): number {
    return this.leases.length;
  }
  [Symbol.iterator](): Iterator<Lease> {
    return this.leases[Symbol.iterator]();
  }
  /** Releases every lease of the claim (an error on one does not stop the others; the first error
   * is thrown once all were tried). */
  async release(): Promise<boolean[]> {
    const results: boolean[] = [];
    let failure: unknown = null;
    for (const lease of this.leases) {
      try {
        results.push(await lease.release());
      } catch (error) {
        results.push(false);
        failure ??= error;
      }
    }
    if (failure !== null) throw failure;
    return results;
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

export interface ElectionOptions {
  /** Seconds (default 10). */
  ttl?: number;
  /** Seconds each queued acquire waits before queueing again (default: the ttl). */
  wait?: number;
  sessionBound?: boolean;
  /** The candidate's name, the lease's holder (default: the client's holder). */
  name?: string;
  onElected?: (lease: Lease) => unknown;
  onLost?: (lease: Lease, loss: Loss) => unknown;
  onChange?: (event: LeaseEvent) => unknown;
}

/**
 * Campaigns for a resource until stopped: queues with lease_acquire(..., wait) (first come,
 * first served), leads while the lease is held (renewed in the background), campaigns again when
 * it is lost. `leader()` reads the current leader with lease_info; `stop()` resigns (releases
 * the lease, so a successor takes over at once).
 */
export class Election implements AsyncDisposable {
  lease: Lease | null = null;
  terms = 0;
  readonly ttl: number;
  readonly wait: number;
  readonly name: string;
  private running: Promise<void> | null = null;
  private abort: AbortController | null = null;
  private unwatch: (() => void) | null = null;
  private waiters: Array<(lease: Lease | null) => void> = [];

  constructor(readonly client: LeaseClient, readonly resource: string, private readonly options: ElectionOptions) {
    this.ttl = seconds(options.ttl, "ttl", 10);
    this.wait = seconds(options.wait, "wait", this.ttl);
    this.name = options.name ?? client.holder;
  }

  get isLeader(): boolean {
    return this.lease?.held ?? false;
  }

  async start(): Promise<this> {
    await this.client.open();
    if (this.options.onChange && !this.unwatch) this.unwatch = this.client.watch(this.resource, this.options.onChange);
    if (!this.running) {
      this.client.track(this, true);
      this.abort = new AbortController();
      this.running = this.campaign(this.abort.signal);
    }
    return this;
  }

  private async campaign(signal: AbortSignal): Promise<void> {
    let pause = 100;
    while (!signal.aborted) {
      let lease: Lease | null;
      try {
        lease = await this.client.tryAcquire(this.resource, { ttl: this.ttl, wait: this.wait, sessionBound: this.options.sessionBound, holder: this.name, signal });
      } catch {
        if (signal.aborted) return;
        await sleep(pause);
        pause = Math.min(pause * 2, this.ttl * 1000);
        continue;
      }
      pause = 100;
      if (!lease) continue;
      this.lease = lease;
      this.terms += 1;
      for (const resolve of this.waiters.splice(0)) resolve(lease);
      if (this.options.onElected) callSafely(this.options.onElected, lease);
      const abortWait = new Promise<null>((resolve) => signal.addEventListener("abort", () => resolve(null), { once: true }));
      const loss = await Promise.race([lease.lost, abortWait]);
      if (loss && this.options.onLost) callSafely(this.options.onLost, lease, loss);
    }
  }

  /** The lease of the current term once this candidate leads (null after `timeout` seconds, or
   * once the election is stopped). */
  async waitElected(timeout?: number): Promise<Lease | null> {
    if (this.lease?.held) return this.lease;
    if (!this.running) return null;
    const elected = new Promise<Lease | null>((resolve) => this.waiters.push(resolve));
    if (timeout === undefined) return elected;
    const limit = timer(timeout * 1000);
    try {
      return await Promise.race([elected, limit.done.then(() => null)]);
    } finally {
      limit.clear();
    }
  }

  /** The current leader (lease_info), or null. */
  leader(): Promise<LeaseInfo | null> {
    return this.client.info(this.resource);
  }

  /** Stops campaigning and resigns; returns the token released, or null if it did not lead. */
  async stop(): Promise<bigint | null> {
    this.client.track(this, false);
    this.unwatch?.();
    this.unwatch = null;
    this.abort?.abort(new LeaseUsageError("the election was stopped"));
    await this.running?.catch(() => undefined);
    this.running = null;
    for (const resolve of this.waiters.splice(0)) resolve(null);
    const lease = this.lease;
    this.lease = null;
    // Released whatever the client's clock says: a lease past its local deadline may still be held
    // on the server, and the successor should not wait for its ttl.
    if (lease && !lease.released) return (await lease.release()) ? lease.token : null;
    return null;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
