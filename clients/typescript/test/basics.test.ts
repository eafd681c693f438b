// Acquire, background renewal, release, waiting, fencing, claims and typed errors.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ConnectionFailed, InvalidArgument, LeaseClient, LeaseLost, LeaseUnavailable, SessionBindingConflict, mapError } from "../src";
import { admin, client, config, direct, one, sleep, useTestServer, waitFor } from "./helpers";

useTestServer();

async function row(resource: string): Promise<{ holder: string; token: string; renewed_at: Date } | undefined> {
  return (await admin.query("SELECT holder, token::text AS token, renewed_at FROM lease_info($1)", [resource])).rows[0];
}

test("a lease is renewed in the background until released", async () => {
  const resource = "ts:basics:renewed";
  const lease = await client({ holder: "ts-a" }).lease(resource, { ttl: 1 });
  assert.ok(lease.holder.startsWith("ts-a#"), lease.holder);
  const first = await row(resource);
  assert.deepEqual([first?.holder, first?.token], [lease.holder, lease.token.toString()]);
  await sleep(2500); // two and a half ttls: only renewals keep it
  const later = await row(resource);
  assert.equal(later?.token, lease.token.toString());
  assert.ok(later!.renewed_at > first!.renewed_at);
  assert.equal(lease.held, true);
  assert.equal(lease.signal.aborted, false);
  assert.equal(await lease.release(), true);
  assert.equal(await row(resource), undefined);
  assert.equal(await lease.release(), false);
  assert.equal(lease.signal.aborted, true);
  assert.equal(await lease.lost, null);
});

test("a taken resource gives null or LeaseUnavailable, and a waiter gets it on release", async () => {
  const resource = "ts:basics:waiter";
  const first = await client({ holder: "ts-one" }).lease(resource, { ttl: 5 });
  const second = client({ holder: "ts-two" });
  assert.equal(await second.tryAcquire(resource, { ttl: 5 }), null);
  await assert.rejects(second.lease(resource, { ttl: 5 }), LeaseUnavailable);
  const waiting = second.tryAcquire(resource, { ttl: 5, wait: 20 });
  await waitFor(async () => (await one(admin, "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'pg-lease ts-two' AND wait_event_type = 'Extension'")) === 1, "the waiter to sleep");
  assert.equal(await first.release(), true);
  const got = await waiting;
  assert.ok(got && got.token > first.token);
  assert.ok(got!.holder.startsWith("ts-two#"));
  assert.equal((await row(resource))?.holder, got!.holder);
  assert.equal(await got!.release(), true);
});

test("fence commits with the write, and a revoked lease is refused and aborts the signal", async () => {
  const resource = "ts:basics:fence";
  const lease = await client().lease(resource, { ttl: 60 });
  const app = await direct();
  try {
    await app.query("CREATE TEMP TABLE fenced (token bigint)");
    await app.query("BEGIN");
    await lease.fence(app);
    await app.query("INSERT INTO fenced VALUES ($1)", [lease.token.toString()]);
    await app.query("COMMIT");
    assert.equal(await lease.check(app), true);
    assert.equal(await one(admin, "SELECT lease_force_release($1)", [resource]), true);
    // ttl 60: the first renewal is 20 s away; only the event can tell the client this soon.
    const loss = await Promise.race([lease.lost, sleep(10000).then(() => "timeout")]);
    assert.notEqual(loss, "timeout");
    assert.deepEqual([lease.loss?.cause, lease.loss?.fromEvent], ["revoked", true]);
    assert.equal(lease.signal.aborted, true);
    assert.ok(lease.signal.reason instanceof LeaseLost);
    await app.query("BEGIN");
    await assert.rejects(lease.fence(app), LeaseLost);
    await app.query("ROLLBACK");
    // The server refuses the token too.
    await app.query("BEGIN");
    await assert.rejects(app.query("SELECT lease_assert($1, $2)", [resource, lease.token.toString()]), { code: "55000" });
    await app.query("ROLLBACK");
    assert.deepEqual((await app.query("SELECT token::text FROM fenced")).rows, [{ token: lease.token.toString() }]);
  } finally {
    await app.end();
  }
});

test("without LISTEN a revocation is seen at the next renewal", async () => {
  const resource = "ts:basics:nolisten";
  const lease = await client({ listen: false }).lease(resource, { ttl: 1.5 });
  assert.equal(await one(admin, "SELECT lease_force_release($1)", [resource]), true);
  const revoked = performance.now();
  await lease.lost;
  assert.ok(performance.now() - revoked < 1500 / 3 + 1000);
  assert.deepEqual([lease.loss?.cause, lease.loss?.fromEvent], ["refused", false]);
});

test("server errors are typed with their SQLSTATEs", async () => {
  const resource = "ts:basics:errors";
  const made = client();
  await assert.rejects(made.tryAcquire("   ", { ttl: 5 }), (error) => error instanceof InvalidArgument && error.sqlstate === "22023");
  await assert.rejects(made.tryAcquire(resource, { ttl: 5, holder: "h".repeat(300) }), (error) => error instanceof InvalidArgument && error.sqlstate === "22023");
  await assert.rejects(made.tryAcquire(resource, { ttl: 0 }), RangeError);
  const bound = await client({ holder: "ts-shared" }).lease(resource, { ttl: 30, sessionBound: true });
  // A session-bound re-acquire under the same holder name from another session (lease objects
  // never share a name, so this takes a statement of one's own).
  const raw = await admin.query("SELECT lease_acquire($1, $2, interval '30 s', session_bound => true)", [resource, bound.holder]).catch((error) => error);
  const conflict = mapError(raw);
  assert.ok(conflict instanceof SessionBindingConflict && conflict.sqlstate === "55006", String(raw));
  assert.ok(mapError(Object.assign(new Error("write EPIPE"), { code: "EPIPE", errno: -32, syscall: "write" })) instanceof ConnectionFailed);
  assert.equal(await bound.release(), true);
});

test("the callback form releases and reports a loss as LeaseLost", async () => {
  const resource = "ts:basics:callback";
  const made = client();
  assert.equal(await made.withLease(resource, { ttl: 30 }, async (lease) => lease.token > 0n), true);
  assert.equal(await row(resource), undefined);
  await assert.rejects(
    made.withLease(resource, { ttl: 60 }, async (_lease, signal) => {
      await admin.query("SELECT lease_force_release($1)", [resource]);
      await new Promise((resolve, reject) => {
        const timer = setTimeout(resolve, 20000);
        const abort = () => (clearTimeout(timer), reject(signal.reason));
        if (signal.aborted) abort();
        else signal.addEventListener("abort", abort);
      });
    }),
    (error) => error instanceof LeaseLost && error.loss?.cause === "revoked",
  );
});

test("a claim takes disjoint leases, renews them together and releases each", async () => {
  const jobs = [0, 1, 2, 3, 4].map((n) => `ts:claim:${n}`);
  const mine = await client({ holder: "ts-w1" }).claim(jobs, { ttl: 1, maxCount: 3 });
  const theirs = await client({ holder: "ts-w2" }).claim(jobs, { ttl: 1, maxCount: 3 });
  assert.deepEqual(mine.leases.map((l) => l.resource), jobs.slice(0, 3));
  assert.deepEqual(theirs.leases.map((l) => l.resource), jobs.slice(3));
  assert.equal((await client({ holder: "ts-w3" }).claim(jobs, { ttl: 1, maxCount: 3 })).length, 0);
  await sleep(2500);
  const rows = (await admin.query("SELECT resource, token::text AS token FROM lease.active WHERE resource LIKE 'ts:claim:%' ORDER BY resource")).rows;
  assert.deepEqual(rows, [...mine, ...theirs].map((l) => ({ resource: l.resource, token: l.token.toString() })));
  assert.equal(await mine.leases[0].release(), true);
  assert.ok([...mine.leases.slice(1), ...theirs.leases].every((l) => l.held));
  await mine.release();
  await theirs.release();
  assert.equal(await one(admin, "SELECT count(*)::int FROM lease.active WHERE resource LIKE 'ts:claim:%'"), 0);
});

test("each lease object is a holder of its own, even within one client", async () => {
  const resource = "ts:basics:own";
  const made = client({ holder: "ts-shared-client" });
  const first = await made.lease(resource, { ttl: 30 });
  assert.equal(await made.tryAcquire(resource, { ttl: 30 }), null);
  const started = performance.now();
  assert.equal(await made.tryAcquire(resource, { ttl: 30, wait: 0.5 }), null);
  assert.ok(performance.now() - started >= 400);
  const waiting = made.tryAcquire(resource, { ttl: 30, wait: 20 });
  await waitFor(async () => (await one(admin, "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'pg-lease ts-shared-client' AND wait_event_type = 'Extension'")) === 1, "the second acquire to wait");
  assert.equal(await first.release(), true);
  const second = await waiting;
  assert.ok(second && second.token > first.token && second.holder !== first.holder);
  assert.deepEqual([(await row(resource))?.holder, (await row(resource))?.token], [second!.holder, second!.token.toString()]);
  assert.equal(second!.held, true);
  assert.equal(await second!.release(), true);
});

test("concurrent claims of one client never return the same resource", async () => {
  const jobs = [0, 1, 2, 3].map((n) => `ts:claims:${n}`);
  const made = client({ holder: "ts-claimer", listen: false });
  const claims = await Promise.all([0, 1, 2, 3, 4, 5].map(() => made.claim(jobs, { ttl: 30, maxCount: 1 })));
  const got = claims.flatMap((c) => c.leases.map((l) => l.resource)).sort();
  assert.deepEqual(got, jobs);
  const rows = (await admin.query("SELECT resource, holder FROM lease.active WHERE resource LIKE 'ts:claims:%' ORDER BY resource")).rows;
  assert.deepEqual(rows, claims.flatMap((c) => c.leases).sort((a, b) => (a.resource < b.resource ? -1 : 1)).map((l) => ({ resource: l.resource, holder: l.holder })));
  for (const claim of claims) await claim.release();
  assert.equal(await one(admin, "SELECT count(*)::int FROM lease.active WHERE resource LIKE 'ts:claims:%'"), 0);
});

test("an abort while the acquire is still connecting ends it at once", async () => {
  const resource = "ts:basics:abort";
  const holder = await client({ holder: "ts-incumbent" }).lease(resource, { ttl: 30 });
  const made = client({ holder: "ts-aborting", listen: false });
  const controller = new AbortController();
  const started = performance.now();
  const acquiring = made.tryAcquire(resource, { ttl: 30, wait: 60, signal: controller.signal });
  controller.abort(new Error("changed my mind"));
  await assert.rejects(acquiring, /changed my mind/);
  assert.ok(performance.now() - started < 5000);
  assert.equal((await row(resource))?.token, holder.token.toString());
  assert.equal(await holder.release(), true);
});

test("closing the client reports its leases lost (closed) and releases them", async () => {
  const resource = "ts:basics:close";
  const made = new LeaseClient({ ...config(), holder: "ts-closing" });
  const lease = await made.lease(resource, { ttl: 30 });
  const called: string[] = [];
  lease.onLost((_lease, loss) => called.push(loss.cause));
  await made.close();
  assert.equal(await row(resource), undefined);
  assert.deepEqual([lease.released, lease.loss?.cause, lease.signal.aborted, await lease.lost], [true, "closed", true, lease.loss]);
  assert.deepEqual(called, ["closed"]);
});
