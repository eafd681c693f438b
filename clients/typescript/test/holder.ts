// A child process for the tests:
//   holder.js elect RESOURCE TTL NAME   campaigns for RESOURCE and prints "leading TOKEN" at each term
//   holder.js hold RESOURCE TTL TABLE   takes the lease, then every 50 ms inserts a row (resource,
//                                       token) into TABLE in a transaction fenced by the lease; stops
//                                       itself (SIGSTOP) right after the fifth commit, between two
//                                       transactions. Before each transaction it looks at the lease:
//                                       once it is lost it prints "lost BY CAUSE sqlstate=S begun=N"
//                                       (BY: signal, if lease.signal was aborted, or clock, if only
//                                       ensureHeld() noticed; N transactions begun in all) and exits
//                                       with status 3.
import { LeaseClient, LeaseLost } from "../src";
import { config, direct, sleep } from "./helpers";

async function elect(resource: string, ttl: number, name: string): Promise<void> {
  const client = new LeaseClient({ ...config(), holder: name });
  const election = client.election(resource, { ttl, onElected: (lease) => console.log(`leading ${lease.token}`) });
  await election.start();
  console.log("candidate");
}

async function hold(resource: string, ttl: number, table: string): Promise<number> {
  const client = new LeaseClient({ ...config(), holder: "ts-paused" });
  const db = await direct();
  try {
    const lease = await client.lease(resource, { ttl });
    console.log(`token ${lease.token}`);
    let begun = 0;
    let writes = 0;
    for (;;) {
      let by = "signal";
      try {
        if (lease.signal.aborted) throw lease.signal.reason;
        by = "clock";
        lease.ensureHeld();
        by = "fence";
        begun += 1;
        await db.query("BEGIN");
        try {
          await lease.fence(db);
          await db.query(`INSERT INTO ${table} (resource, token) VALUES ($1, $2)`, [resource, lease.token.toString()]);
          await db.query("COMMIT");
        } catch (error) {
          await db.query("ROLLBACK");
          throw error;
        }
      } catch (error) {
        if (!(error instanceof LeaseLost)) throw error;
        console.log(`lost ${by} ${lease.loss?.cause ?? "none"} sqlstate=${error.sqlstate} begun=${begun}`);
        return 3;
      }
      writes += 1;
      if (writes === 5) {
        // Stopped here, between two transactions, until the test sends SIGCONT.
        console.log("pausing");
        process.kill(process.pid, "SIGSTOP");
      }
      await Promise.race([lease.lost, sleep(50)]);
    }
  } finally {
    await client.close();
    await db.end();
  }
}

async function main(): Promise<void> {
  const [mode, resource, ttl, extra] = process.argv.slice(2);
  if (mode === "elect") await elect(resource, Number(ttl), extra);
  else if (mode === "hold") process.exitCode = await hold(resource, Number(ttl), extra);
  else throw new Error(`unknown mode ${mode}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
