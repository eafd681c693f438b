// A candidate process for the tests: campaigns for argv[2] with ttl argv[3] under the name
// argv[4], and prints "leading TOKEN" at each term.
import { LeaseClient } from "../src";
import { config } from "./helpers";

async function main(): Promise<void> {
  const [resource, ttl, name] = process.argv.slice(2);
  const client = new LeaseClient({ ...config(), holder: name });
  const election = client.election(resource, { ttl: Number(ttl), onElected: (lease) => console.log(`leading ${lease.token}`) });
  await election.start();
  console.log("candidate");
}

void main();
