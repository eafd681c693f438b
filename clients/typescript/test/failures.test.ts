// The failures each feature survives: a killed connection, a stalled network, a paused holder
// process, a killed leader process, a resignation, an aborted claim, and PgBouncer in transaction
// pooling mode in between.
import assert from "node:assert/strict";
import { ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { LeaseLost, LeaseUsageError } from "../src";
import { PgBouncer, Proxy, admin, client, direct, one, sleep, useTestServer, waitFor } from "./helpers";

const MARGIN_MS = 500;
useTestServer();

async function info(resource: string) {
  return (await admin.query("SELECT holder, token::text AS token, expires_at, renewed_at, session_pid FROM lease_info($1)", [resource])).rows[0];
}

for (const listen of [true, false]) {
  test(`a killed connection ends a session-bound lease and the client says so at once (listen: ${listen})`, async () => {
    const resource = `ts:fail:bound:${listen}`;
    const lease = await client({ holder: "ts-bound", listen }).lease(resource, { ttl: 30, sessionBound: true });
    const pid = (await info(resource)).session_pid;
    assert.equal(pid, lease.backendPid);
    assert.equal(await one(admin, "SELECT pg_terminate_backend($1)", [pid]), true);
    const killed = performance.now();
    await Promise.race([lease.lost, sleep(10000)]);
    // At once, not at the first renewal (10 s away): the event, or the connection's end itself.
    assert.ok(performance.now() - killed < 1000, `${performance.now() - killed} ms`);
    assert.equal(lease.loss?.cause, "session_ended");
    // The client may hear of the end before the server process has finished exiting.
    await waitFor(async () => (await one(admin, "SELECT lease_check($1, $2)", [resource, lease.token.toString()])) === false, "the server to end the lease", 10);
    const next = await client({ holder: "ts-next" }).lease(resource, { ttl: 5 });
    assert.ok(next.token > lease.token);
  });
}

test("a renewal queued behind a stalled release is lost by its deadline", async () => {
  const resources = ["ts:fail:queued:a", "ts:fail:queued:b"];
  const ttl = 1.5;
  const proxy = await new Proxy().start();
  try {
    // timeout 10: a release on the stalled connection holds it that long.
    const made = client({ port: proxy.port, holder: "ts-queued", listen: false, timeout: 10 });
    const claim = await made.claim(resources, { ttl, maxCount: 2 });
    const [first, second] = claim.leases;
    proxy.stall();
    const releasing = first.release().catch((error) => error);
    await Promise.race([second.lost, sleep((ttl + 5) * 1000)]);
    const late = performance.now() - second.validUntil;
    assert.equal(second.loss?.cause, "deadline");
    assert.ok(late < 1000, `${late} ms`); // by the deadline, not after the release's timeout (10 s)
    proxy.resume();
    assert.ok([true, false].includes(await releasing));
  } finally {
    proxy.resume();
    proxy.close();
    for (const resource of resources) await admin.query("SELECT lease_force_release($1)", [resource]);
  }
});

test("a stopped election ends waitElected and releases a lease past its local deadline", async () => {
  const resource = "ts:fail:stopped";
  const holder = await client({ holder: "ts-incumbent" }).lease(resource, { ttl: 30 });
  const hopeful = await client({ holder: "ts-hopeful" }).election(resource, { ttl: 30, wait: 30 }).start();
  const waiting = hopeful.waitElected();
  assert.equal(await hopeful.stop(), null);
  assert.equal(await Promise.race([waiting, sleep(10000).then(() => "timeout")]), null);
  assert.equal(await holder.release(), true);

  const leader = await client({ holder: "ts-leader" }).election(resource, { ttl: 30 }).start();
  const term = (await leader.waitElected(10))!;
  (term as unknown as { until: number }).until = performance.now() - 1000; // as if renewals had stalled
  assert.equal(term.held, false);
  assert.equal(await leader.stop(), term.token);
  assert.equal(await one(admin, "SELECT count(*)::int FROM lease_info($1)", [resource]), 0);
});

test("a killed connection of a plain lease is replaced and the lease kept", async () => {
  const resource = "ts:fail:plain";
  const lease = await client({ holder: "ts-plain" }).lease(resource, { ttl: 1.5 });
  const pid = lease.backendPid;
  assert.equal(await one(admin, "SELECT pg_terminate_backend($1)", [pid]), true);
  await sleep(4500); // three ttls
  assert.equal(lease.held, true);
  assert.equal((await info(resource)).token, lease.token.toString());
  assert.ok(lease.backendPid !== null && lease.backendPid !== pid);
  assert.equal(await lease.release(), true);
});

test("a stalled network loses the lease by the client's clock, before the server's expiry plus a margin", async () => {
  const resource = "ts:fail:stall";
  const ttl = 1.5;
  const proxy = await new Proxy().start();
  try {
    const lease = await client({ port: proxy.port, holder: "ts-stalled" }).lease(resource, { ttl });
    const renewed = (await info(resource)).renewed_at;
    await waitFor(async () => (await info(resource)).renewed_at > renewed, "a renewal", ttl);
    proxy.stall(); // right after a renewal: none in flight, so the server's expiry is final
    const expiresAt: Date = (await info(resource)).expires_at;
    await Promise.race([lease.lost, sleep((ttl + 5) * 1000)]);
    const detected: Date = await one(admin, "SELECT clock_timestamp()");
    assert.equal(lease.loss?.cause, "deadline");
    assert.ok(detected.getTime() <= expiresAt.getTime() + MARGIN_MS, `${detected.toISOString()} vs ${expiresAt.toISOString()}`);
    assert.ok(detected.getTime() >= expiresAt.getTime() - (ttl * 1000) / 3 - MARGIN_MS);
    const successor = await client({ holder: "ts-successor" }).lease(resource, { ttl: 5, wait: ttl + 5 });
    assert.ok(successor.token > lease.token);
    const writer = await direct();
    try {
      await writer.query("BEGIN");
      await assert.rejects(lease.fence(writer), LeaseLost);
      await assert.rejects(writer.query("SELECT lease_assert($1, $2)", [resource, lease.token.toString()]), { code: "55000" });
      await writer.query("ROLLBACK");
    } finally {
      await writer.end();
    }
  } finally {
    proxy.resume();
    proxy.close();
  }
});

test("one candidate leads; a resignation hands over at once; a killed leader process is replaced within the ttl", async () => {
  const resource = "ts:fail:election";
  const ttl = 2;
  const events: string[] = [];
  const first = await client({ holder: "ts-first" }).election(resource, { ttl }).start();
  const term = await first.waitElected(10);
  assert.ok(term);
  const second = await client({ holder: "ts-second" }).election(resource, { ttl, onChange: (e) => events.push(`${e.event} ${e.holder}`) }).start();
  assert.equal(await second.waitElected(2.5), null);
  assert.equal((await second.leader())?.holder, term!.holder);
  assert.ok(term!.holder.startsWith("ts-first#"));
  const resigned = performance.now();
  assert.equal(await first.stop(), term!.token);
  const successor = await second.waitElected(10);
  assert.ok(successor && successor.token > term!.token);
  assert.ok(performance.now() - resigned < ttl * 1000);
  await waitFor(() => events.length >= 2, "events", 10);
  assert.deepEqual(events.slice(0, 2), [`released ${term!.holder}`, `acquired ${successor!.holder}`]);
  assert.equal(await second.stop(), successor!.token);

  // A leader in a process of its own, killed: the candidate here leads within ttl + 2 s.
  const leader = spawn(process.execPath, [join(__dirname, "holder.js"), "elect", resource, String(ttl), "ts-doomed"], { stdio: ["ignore", "pipe", "inherit"] });
  try {
    let output = "";
    leader.stdout!.on("data", (data) => (output += data));
    const token = BigInt((await waitFor(() => /leading (\d+)/.exec(output), "the child to lead"))![1]);
    const follower = await client({ holder: "ts-follower" }).election(resource, { ttl }).start();
    const killed = performance.now();
    leader.kill("SIGKILL");
    const next = await follower.waitElected(ttl + 2);
    assert.ok(next, "no new leader within the ttl and a margin");
    assert.ok(performance.now() - killed <= (ttl + 2) * 1000);
    assert.ok(next!.token > token);
    await follower.stop();
  } finally {
    if (leader.exitCode === null && leader.signalCode === null) leader.kill("SIGKILL");
  }
});

test("through PgBouncer in transaction pooling mode", async () => {
  const bouncer = await new PgBouncer().start(3);
  try {
    const resource = "ts:fail:pgbouncer";
    const pooled = client({ port: bouncer.port, listen: false, holder: "ts-pooled" });
    assert.throws(() => pooled.watch(resource, () => undefined), LeaseUsageError);
    const lease = await pooled.lease(resource, { ttl: 0.9 });
    await sleep(6 * 900); // eighteen renewals through the pooler
    assert.equal(lease.held, true);
    assert.equal((await info(resource)).token, lease.token.toString());
    const app = await direct(bouncer.port);
    try {
      await app.query("BEGIN");
      await lease.fence(app);
      assert.equal(await one(app, "SELECT lease_check($1, $2)", [resource, lease.token.toString()]), true);
      await app.query("COMMIT");
    } finally {
      await app.end();
    }
    const waiter = client({ port: bouncer.port, listen: false, holder: "ts-pooled-waiter" });
    const waiting = waiter.tryAcquire(resource, { ttl: 2, wait: 20 });
    await waitFor(async () => (await one(admin, "SELECT count(*)::int FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE 'SELECT lease_acquire(%'")) === 1, "the waiter to sleep");
    assert.equal(await lease.release(), true);
    const next = await waiting;
    assert.ok(next && next.token > lease.token);
    assert.equal(await one(admin, "SELECT lease_force_release($1)", [resource]), true);
    await next!.lost;
    assert.equal(next!.loss?.cause, "refused");
  } finally {
    await bouncer.stop();
  }
});

/** The state letter of a process in /proc (T: stopped), or null once it is gone. */
function processState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return null;
  }
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

test("a holder paused past its ttl finds its lease lost when resumed and writes nothing after the takeover", async () => {
  const resource = "ts:fail:paused";
  const table = "pg_lease_ts_progress";
  const ttl = 1.5;
  await admin.query(`DROP TABLE IF EXISTS ${table}`);
  await admin.query(`CREATE TABLE ${table} (resource text, token bigint, at timestamptz DEFAULT clock_timestamp())`);
  const holder = spawn(process.execPath, [join(__dirname, "holder.js"), "hold", resource, String(ttl), table], { stdio: ["ignore", "pipe", "inherit"] });
  let output = "";
  holder.stdout!.on("data", (data) => (output += data));
  const exit = exited(holder);
  try {
    const token = BigInt((await waitFor(() => /token (\d+)/.exec(output), "the holder's lease"))![1]);
    // It stops itself between two transactions: stopped inside one, it would leave a fence open,
    // which rightly keeps any successor waiting.
    await waitFor(() => output.includes("pausing\n"), "the holder to pause");
    await waitFor(() => processState(holder.pid!) === "T", "the holder to be stopped", 10);
    const count = async (extra = "", values: unknown[] = []) =>
      one(admin, `SELECT count(*)::int FROM ${table} WHERE token = $1 ${extra}`, [token.toString(), ...values]);
    assert.equal(await count(), 5);
    let acquiredAt: string;
    try {
      const successor = await client({ holder: "ts-successor" }).lease(resource, { ttl: 30, wait: ttl + 10 });
      assert.ok(successor.token > token);
      acquiredAt = await one(admin, "SELECT acquired_at::text FROM lease_info($1)", [resource]);
    } finally {
      holder.kill("SIGCONT");
    }
    const code = await Promise.race([exit, sleep(15000).then(() => "timeout")]);
    assert.equal(code, 3, output);
    // Woken up, it found the lease lost before beginning another transaction: its signal aborted,
    // or ensureHeld() by the client's clock; not a refusal by the server.
    const lost = /^lost (\w+) (\w+) sqlstate=(\w+) begun=(\d+)$/m.exec(output);
    assert.ok(lost, output);
    assert.ok(["signal", "clock"].includes(lost![1]), output);
    assert.equal(lost![3], "null", output);
    assert.equal(lost![4], "5", output);
    // Exact, from the table: its five rows, all written before the successor's grant.
    assert.equal(await count(), 5);
    assert.equal(await count("AND at >= $2::timestamptz", [acquiredAt!]), 0);
    assert.equal(await one(admin, "SELECT lease_check($1, $2)", [resource, token.toString()]), false);
  } finally {
    if (holder.exitCode === null && holder.signalCode === null) {
      holder.kill("SIGKILL");
      holder.kill("SIGCONT");
      await Promise.race([exit, sleep(10000)]);
    }
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
    await admin.query("SELECT lease_force_release($1)", [resource]);
  }
});

test("an aborted claim ends with the abort's reason and keeps nothing, before, during and just after the statement", async () => {
  const resources = ["ts:fail:claim-abort:a", "ts:fail:claim-abort:b"];
  const held = async () => one(admin, "SELECT count(*)::int FROM unnest($1::text[]) AS r(resource), lease_info(r.resource)", [resources]);
  const claiming = () =>
    one(admin, "SELECT count(*)::int FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT resource, token::text AS token FROM lease_acquire_any(%'");
  const claimer = client({ holder: "ts-claim-abort", listen: false });

  // Before: nothing is sent.
  const before = new AbortController();
  before.abort(new Error("aborted before"));
  await assert.rejects(claimer.claim(resources, { ttl: 30, maxCount: 2, signal: before.signal }), /aborted before/);
  assert.equal(await held(), 0);

  // During: the statement, blocked behind a lock on the lease table, is cancelled on the server.
  const locker = await direct();
  const proxy = await new Proxy().start();
  try {
    await locker.query("BEGIN");
    await locker.query("LOCK TABLE lease.leases IN ACCESS EXCLUSIVE MODE");
    const during = new AbortController();
    const claim = claimer.claim(resources, { ttl: 30, maxCount: 2, signal: during.signal });
    claim.catch(() => undefined);
    await waitFor(async () => (await claiming()) === 1, "the claim to wait for the lock", 10);
    during.abort(); // the default reason, an AbortError
    await waitFor(async () => (await claiming()) === 0, "the claim to be cancelled", 10);
    await locker.query("ROLLBACK");
    await assert.rejects(claim, { name: "AbortError" });
    assert.equal(await held(), 0);

    // Just after: the grant is made, its answer held back by a stalled proxy, and the cancel
    // reaches the server only once the statement is over. The claim gives the leases back.
    const late = client({ port: proxy.port, holder: "ts-claim-late", listen: false });
    await locker.query("BEGIN");
    await locker.query("LOCK TABLE lease.leases IN ACCESS EXCLUSIVE MODE");
    const after = new AbortController();
    const lateClaim = late.claim(resources, { ttl: 30, maxCount: 2, signal: after.signal });
    lateClaim.catch(() => undefined);
    await waitFor(async () => (await claiming()) === 1, "the late claim to wait for the lock", 10);
    proxy.stall();
    after.abort(new Error("aborted after"));
    await locker.query("ROLLBACK");
    await waitFor(async () => (await held()) === 2, "the late claim's grants", 10);
    proxy.resume();
    await assert.rejects(lateClaim, /aborted after/);
    assert.equal(await held(), 0);
  } finally {
    proxy.resume();
    proxy.close();
    await locker.query("ROLLBACK").catch(() => undefined);
    await locker.end();
    for (const resource of resources) await admin.query("SELECT lease_force_release($1)", [resource]);
  }
});
