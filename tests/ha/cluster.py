"""A throwaway high-availability cluster on loopback: one etcd member and PostgreSQL 15 nodes
managed by Patroni, each node preloading the extension. Every process runs as the server's OS
user, is started and stopped by pid (remembered in RUN/pids, so that a later run, or
`python3 cluster.py cleanup RUN`, can end what a killed run left), and logs into RUN.

Used by tests/ha/test_failover.py and bench/ha/failover.py. Only the Python standard library is
needed here; the clients use psycopg."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from support import SERVER_USER, as_root, free_port, wait_for  # noqa: E402,F401

RUN_DIR = os.environ.get("LEASE_RUN_DIR", "/tmp/lease")
PG_BIN = "/usr/lib/postgresql/15/bin"
SCOPE = "lease-ha"

# Patroni's timing (seconds). The leader key lives `ttl` seconds unless its Patroni renews it
# every `loop_wait`; a DCS or PostgreSQL call is retried for `retry_timeout`. Patroni wants
# loop_wait + 2 * retry_timeout <= ttl.
TTL = 10
LOOP_WAIT = 1
RETRY_TIMEOUT = 4

# What a process of ours is, as its command line shows it (checked before a pid from a file is
# signalled: the pid may have been reused since).
COMMANDS = ("etcd", "patroni", "postgres")


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_alive(pid):
    """Whether `pid` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid):
    """The pids whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def signal_pids(pids, signum):
    pids = [pid for pid in pids if is_alive(pid)]
    if pids:
        as_root("kill", f"-{signum.name[3:]}", *map(str, pids), check=False)


def stop_pids(pids, timeout=30.0):
    """SIGTERM, then SIGKILL what is still there after `timeout` seconds."""
    signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_pids(pids, signal.SIGKILL)


def http_json(url, timeout=2.0):
    """The JSON body of GET `url` (whatever the status), or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return json.loads(error.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


class Process:
    """A process run as the server's user, its output appended to `log`. `pid` is the process
    itself (a shell writes its own pid, then execs the command), not sudo's."""

    def __init__(self, cluster, name, command, log):
        self.name = name
        pid_file = os.path.join(cluster.dir, f"{name}.pid")
        as_root("rm", "-f", pid_file)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        script = 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@" >> "$LOG" 2>&1'
        self._runner = subprocess.Popen(
            [*sudo, "sudo", "-u", SERVER_USER, f"LOG={log}", "sh", "-c", script, pid_file, *command],
            cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for(lambda: os.path.exists(pid_file) or self._runner.poll() is not None, 30, f"{name} to start")
        assert self._runner.poll() is None, f"{name} exited at once (see {log})"
        with open(pid_file) as f:
            self.pid = int(f.read())
        cluster.remember(self.pid)

    def alive(self):
        self._runner.poll()  # reaps sudo once the command has gone
        return is_alive(self.pid)

    def kill(self):
        signal_pids([self.pid], signal.SIGKILL)
        wait_for(lambda: not self.alive(), 30, f"{self.name} to die")

    def stop(self, timeout=30.0):
        stop_pids([self.pid], timeout)
        wait_for(lambda: not self.alive(), 30, f"{self.name} to stop")


class Node:
    """A PostgreSQL node and its Patroni."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.dir = os.path.join(cluster.dir, name)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.rest_port = free_port()
        self.config = os.path.join(self.dir, "patroni.yml")
        self.log = os.path.join(self.dir, "patroni.log")
        self.patroni = None
        as_root("mkdir", "-p", self.dir)
        as_root("chown", SERVER_USER, self.dir)
        as_root("chmod", "700", self.dir)
        # JSON is YAML: no YAML library needed.
        settings = json.dumps(self.settings(), indent=2)
        subprocess.run(
            [*([] if os.geteuid() == 0 else ["sudo"]), "sudo", "-u", SERVER_USER, "tee", self.config],
            input=settings, text=True, check=True, stdout=subprocess.DEVNULL, cwd="/",
        )

    def settings(self):
        """This node's Patroni configuration (README.md, "High availability", explains it)."""
        trust = ["local all all trust", "host all all 127.0.0.1/32 trust",
                 "host replication all 127.0.0.1/32 trust"]
        return {
            "scope": SCOPE,
            "name": self.name,
            "restapi": {"listen": f"127.0.0.1:{self.rest_port}", "connect_address": f"127.0.0.1:{self.rest_port}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.cluster.etcd_port}"]},
            "bootstrap": {
                # Written to etcd by the node that bootstraps: the whole cluster's settings.
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    # Fail over when the primary's PostgreSQL dies, rather than restart it in place.
                    "primary_start_timeout": 0,
                    "synchronous_mode": self.cluster.synchronous,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {"wal_log_hints": "on", "max_wal_senders": 10, "max_replication_slots": 10},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, {"auth": "trust"}],
                # Runs once, on the primary the cluster was bootstrapped on (Patroni adds the
                # connection string as the last argument).
                "post_bootstrap": f"{PG_BIN}/psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION lease'",
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.port}",
                "connect_address": f"127.0.0.1:{self.port}",
                "data_dir": self.data,
                "bin_dir": PG_BIN,
                "pgpass": os.path.join(self.dir, "pgpass"),
                "authentication": {"superuser": {"username": "postgres"}, "replication": {"username": "replicator"}},
                "pg_hba": trust,
                # Clone a replica without waiting for the primary's next checkpoint.
                "basebackup": [{"checkpoint": "fast"}],
                "parameters": {
                    "shared_preload_libraries": "lease",
                    "lease.database": "postgres",
                    "unix_socket_directories": self.dir,
                },
            },
            "watchdog": {"mode": "off"},
        }

    def start(self):
        self.patroni = Process(self.cluster, f"{self.name}-patroni", ["/usr/bin/patroni", self.config], self.log)

    def status(self):
        """Patroni's view of this node (GET /patroni), or None while its Patroni is down."""
        return http_json(f"http://127.0.0.1:{self.rest_port}/patroni")

    def is_primary(self):
        status = self.status()
        return bool(status) and status.get("role") in ("master", "primary") and status.get("state") == "running"

    def is_replica(self):
        status = self.status()
        return bool(status) and status.get("role") == "replica" and status.get("state") == "running"

    def postmaster_pid(self):
        result = as_root("head", "-n", "1", os.path.join(self.data, "postmaster.pid"), check=False)
        if result.returncode != 0 or not result.stdout.strip().isdigit():
            return None
        pid = int(result.stdout.strip())
        return pid if is_alive(pid) and "postgres" in command_line(pid) else None

    def kill_postgres(self):
        """SIGKILL to the postmaster and every process it started, at once, as a crash of the
        machine would end them: nothing is shut down cleanly and no backend lingers. Returns
        time.monotonic() when they were signalled, once they are gone."""
        pid = self.postmaster_pid()
        assert pid is not None, f"{self.name}: no postmaster to kill"
        self.cluster.remember(pid)
        victims = [pid, *children(pid)]
        signalled = time.monotonic()
        signal_pids(victims, signal.SIGKILL)
        wait_for(lambda: not any(is_alive(victim) for victim in victims), 30, f"{self.name}'s postgres to die")
        return signalled

    def kill(self):
        """The node dies: Patroni first (so that it cannot react), then PostgreSQL. Returns
        time.monotonic() when Patroni was signalled."""
        signalled = time.monotonic()
        self.patroni.kill()
        self.kill_postgres()
        return signalled

    def stop(self):
        if self.patroni is not None and self.patroni.alive():
            self.patroni.stop(timeout=30)  # Patroni stops its PostgreSQL first
        pid = self.postmaster_pid()
        if pid is not None:
            stop_pids([pid, *children(pid)], timeout=10)

    def log_text(self):
        return as_root("cat", self.log, check=False).stdout


class Cluster:
    """One etcd member and `size` nodes; `start()` bootstraps the first node and clones the
    others from it, then waits until every node runs (and, in synchronous mode, until a replica
    is the synchronous standby)."""

    def __init__(self, size=2, synchronous=True, name="ha"):
        self.dir = os.path.join(RUN_DIR, name)
        self.synchronous = synchronous
        cleanup(self.dir)
        as_root("rm", "-rf", self.dir)
        as_root("mkdir", "-p", self.dir)
        as_root("chown", SERVER_USER, self.dir)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.etcd = None
        self.nodes = [Node(self, f"node{n + 1}") for n in range(size)]

    def remember(self, pid):
        as_root("sh", "-c", f'echo {pid} >> "$0"', os.path.join(self.dir, "pids"))

    def start(self, timeout=180.0):
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = Process(self, "etcd", [
            "/usr/bin/etcd", "--name", "etcd1", "--data-dir", os.path.join(self.dir, "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"etcd1={peer_url}", "--initial-cluster-state", "new",
            "--initial-cluster-token", SCOPE,
        ], os.path.join(self.dir, "etcd.log"))
        wait_for(lambda: (http_json(f"{etcd_url}/health") or {}).get("health") == "true", timeout, "etcd")
        first = self.nodes[0]
        first.start()
        wait_for(first.is_primary, timeout, f"{first.name} to bootstrap the cluster")
        for node in self.nodes[1:]:
            node.start()
        for node in self.nodes[1:]:
            self.wait_for_replica(node, timeout)
        return self

    def primary(self):
        """The node whose Patroni says it runs the primary, if exactly one does."""
        found = [node for node in self.nodes if node.is_primary()]
        return found[0] if len(found) == 1 else None

    def wait_for_primary(self, other_than, timeout):
        return wait_for(
            lambda: next((n for n in self.nodes if n is not other_than and n.is_primary()), None),
            timeout, f"a primary other than {other_than.name}",
        )

    def members(self):
        """GET /cluster from any node that answers: {name: member}."""
        for node in self.nodes:
            found = http_json(f"http://127.0.0.1:{node.rest_port}/cluster")
            if found:
                return {m["name"]: m for m in found.get("members", [])}
        return {}

    def wait_for_replica(self, node, timeout):
        """Until `node` streams from the primary (as its synchronous standby in synchronous mode)
        on the primary's timeline."""

        def ready():
            members = self.members()
            leader = next((m for m in members.values() if m.get("role") == "leader"), None)
            member = members.get(node.name)
            if leader is None or member is None or member.get("state") not in ("running", "streaming"):
                return False
            wanted = "sync_standby" if self.synchronous else "replica"
            return member.get("role") == wanted and member.get("timeline") == leader.get("timeline") \
                and node.is_replica()

        wait_for(ready, timeout, f"{node.name} to replicate from the primary")

    def stop(self):
        """Stops the replicas, then the primary (stopping a primary's Patroni first would let a
        replica take over), then etcd; SIGKILL for whatever does not stop in time."""
        primary = self.primary()
        for node in [n for n in self.nodes if n is not primary] + ([primary] if primary else []):
            node.stop()
        if self.etcd is not None and self.etcd.alive():
            self.etcd.stop(timeout=10)
        cleanup(self.dir)

    def connection_string(self):
        """libpq: every node, and only the one that accepts writes."""
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(node.port) for node in self.nodes)
        return (f"host={hosts} port={ports} user=postgres dbname=postgres "
                "target_session_attrs=read-write connect_timeout=5")


def cleanup(directory):
    """Ends every process a run in `directory` started and that still runs, by the pids it
    remembered, and every postmaster of its data directories (SIGKILL: their data is
    throwaway)."""
    pids = []
    result = as_root("cat", os.path.join(directory, "pids"), check=False)
    for line in result.stdout.split():
        if line.isdigit():
            pids.append(int(line))
    listing = as_root("sh", "-c", f'ls -d "{directory}"/*/data/postmaster.pid 2>/dev/null', check=False).stdout
    for pid_file in listing.split():
        first = as_root("head", "-n", "1", pid_file, check=False).stdout.strip()
        if first.isdigit():
            pids.append(int(first))
    ours = [pid for pid in set(pids) if is_alive(pid) and any(c in command_line(pid) for c in COMMANDS)]
    for pid in list(ours):
        if "postgres" in command_line(pid):
            ours += children(pid)
    signal_pids(ours, signal.SIGKILL)
    return ours


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "cleanup":
        ended = cleanup(sys.argv[2])
        if ended:
            print(f"ended {len(ended)} leftover processes: {' '.join(map(str, sorted(ended)))}")
    else:
        sys.exit("usage: cluster.py cleanup RUN_DIR/ha")
