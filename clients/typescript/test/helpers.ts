// Helpers for the client's tests, against the test server of scripts/test.sh (LEASE_TEST_PORT,
// user postgres, database postgres): direct connections, deadline waits, a TCP proxy that can
// stall, PgBouncer in transaction pooling mode.

import { ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { AddressInfo, Server, Socket, createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { Client } from "pg";

import { LeaseClient } from "../src";

export const PORT = Number(process.env.LEASE_TEST_PORT ?? "54329");
const SERVER_USER = process.env.LEASE_SERVER_USER ?? "postgres";

export function config(port = PORT) {
  return { host: "127.0.0.1", port, user: "postgres", database: "postgres" };
}

export async function direct(port = PORT): Promise<Client> {
  const client = new Client(config(port));
  client.on("error", () => undefined);
  await client.connect();
  return client;
}

/** The test file's administrator connection, open between the hooks of [`useTestServer`]. */
export let admin: Client;
const made: LeaseClient[] = [];

/** A client of the test server, closed when the test file ends. */
export function client(options: Record<string, unknown> = {}): LeaseClient {
  made.push(new LeaseClient({ ...config(), ...options }));
  return made[made.length - 1];
}

/** Registers a test file's set-up (the administrator connection, the extension) and clean-up
 * (its clients closed, its `ts:` leases force-released). */
export function useTestServer(): void {
  before(async () => {
    admin = await direct();
    await admin.query("CREATE EXTENSION IF NOT EXISTS lease");
  });
  after(async () => {
    for (const leaseClient of made) await leaseClient.close();
    await admin.query("SELECT lease_force_release(resource) FROM lease.leases WHERE resource LIKE 'ts:%'");
    await admin.end();
  });
}

export async function one(client: Client, text: string, values: unknown[] = []): Promise<any> {
  const result = await client.query({ text, values, rowMode: "array" });
  return result.rows[0]?.[0];
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `condition` until it is truthy; fails after `timeout` seconds. */
export async function waitFor<T>(condition: () => Promise<T> | T, what: string, timeout = 30): Promise<T> {
  const deadline = performance.now() + timeout * 1000;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeout} s waiting for ${what}`);
    await sleep(10);
  }
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A TCP proxy to the server whose traffic can be stalled (bytes held, connections kept open). */
export class Proxy {
  port = 0;
  private stalled = false;
  private readonly held: Array<() => void> = [];
  private readonly sockets: Socket[] = [];
  private readonly server: Server;

  constructor(private readonly target = PORT) {
    this.server = createServer((client) => {
      const upstream = createConnection(this.target, "127.0.0.1");
      this.sockets.push(client, upstream);
      for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
        from.on("data", (data) => {
          if (this.stalled) this.held.push(() => to.write(data));
          else to.write(data);
        });
        from.on("close", () => to.destroy());
        from.on("error", () => to.destroy());
      }
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  stall(): void {
    this.stalled = true;
  }

  resume(): void {
    this.stalled = false;
    for (const send of this.held.splice(0)) send();
  }

  close(): void {
    this.server.close();
    for (const socket of this.sockets) socket.destroy();
  }
}

/** PgBouncer 1.18 in transaction pooling mode, run as the server's OS user. */
export class PgBouncer {
  port = 0;
  private process: ChildProcess | null = null;
  private dir = "";

  async start(poolSize = 3): Promise<this> {
    this.port = await freePort();
    this.dir = mkdtempSync(join(tmpdir(), "pg-lease-pgbouncer-"));
    chmodSync(this.dir, 0o777);
    writeFileSync(join(this.dir, "users.txt"), '"postgres" ""\n', { mode: 0o666 });
    writeFileSync(
      join(this.dir, "pgbouncer.ini"),
      `[databases]\npostgres = host=127.0.0.1 port=${PORT} dbname=postgres\n` +
        `[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = ${this.port}\nunix_socket_dir =\nauth_type = trust\n` +
        `auth_file = ${this.dir}/users.txt\npool_mode = transaction\ndefault_pool_size = ${poolSize}\nmax_client_conn = 100\n` +
        `logfile = ${this.dir}/pgbouncer.log\npidfile = ${this.dir}/pgbouncer.pid\n`,
      { mode: 0o666 },
    );
    const sudo = process.getuid?.() === 0 ? ["sudo", "-u", SERVER_USER] : ["sudo", "sudo", "-u", SERVER_USER];
    this.process = spawn(sudo[0], [...sudo.slice(1), "/usr/sbin/pgbouncer", join(this.dir, "pgbouncer.ini")], { cwd: "/", stdio: "ignore" });
    await waitFor(async () => {
      try {
        const client = await direct(this.port);
        await client.end();
        return true;
      } catch {
        return false;
      }
    }, "pgbouncer to accept connections");
    return this;
  }

  async stop(): Promise<void> {
    const exited = new Promise((resolve) => this.process?.once("exit", resolve));
    this.process?.kill("SIGTERM");
    await Promise.race([exited, sleep(10000)]);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
