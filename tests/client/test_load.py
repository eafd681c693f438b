"""Randomized load with faults (tests/load): 32 sessions for LEASE_LOAD_SECONDS (default 30) on
a throwaway cluster of its own (on a free port, fsync on), with backends terminated
and one crash and restart; the checker must find zero violations of its five properties, must
have checked enough, must catch each fault injected into a copy of the record, and must catch
the stale writes of a broken model that checks leases without fencing.
`LEASE_LOAD_SECONDS=600 ./scripts/test.sh` is the long run."""

import json
import os
import pathlib
import subprocess

import pytest

from conftest import RUN_DIR, SERVER_USER, free_port

SECONDS = float(os.environ.get("LEASE_LOAD_SECONDS", "30"))
RUN_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "load", "run.sh")
# Two busy cores grant about 45 leases a second under this load; the floor leaves room for a slow machine.
GRANTS_PER_SECOND_FLOOR = 25
PROPERTIES = ["exclusive", "fencing", "tokens", "durable", "errors"]
LOG_DIR = os.environ.get("LEASE_TEST_LOG_DIR")


def run_load(out, name, seconds, *options):
    """Runs tests/load/run.sh; returns its exit status, JSON summary and the end of its output.
    The report goes to LEASE_TEST_LOG_DIR if it is set, else to the test's temporary directory."""
    out = pathlib.Path(LOG_DIR) if LOG_DIR else out
    out.mkdir(parents=True, exist_ok=True)
    report, summary = out / f"{name}.md", out / f"{name}.json"
    summary.unlink(missing_ok=True)
    env = dict(os.environ, LEASE_LOAD_PORT=str(free_port()), LEASE_RUN_DIR=RUN_DIR, LEASE_SERVER_USER=SERVER_USER)
    finished = subprocess.run(
        [RUN_SCRIPT, "--seconds", str(seconds), "--report", str(report), "--json", str(summary), *options],
        env=env, capture_output=True, text=True, timeout=seconds + 900,
    )
    output = finished.stdout[-20000:] + finished.stderr[-5000:]
    assert summary.exists(), f"the load program ended without a summary:\n{output}"
    print(f"report: {report}")
    return finished.returncode, json.loads(summary.read_text()), output


@pytest.fixture(scope="module", autouse=True)
def remove_the_load_cluster():
    yield
    common = os.path.join(os.path.dirname(RUN_SCRIPT), "..", "..", "scripts", "common.sh")
    subprocess.run(["bash", "-c", f"source {common}; cluster_destroy load"], env=dict(os.environ, LEASE_RUN_DIR=RUN_DIR),
                   capture_output=True, check=False)


@pytest.fixture(scope="module")
def load_run(tmp_path_factory):
    return run_load(tmp_path_factory.mktemp("load"), "load", SECONDS, "--self-test")


def test_load_finds_no_violations(load_run):
    status, summary, output = load_run
    assert {name: p["violations"] for name, p in summary["properties"].items()} == dict.fromkeys(PROPERTIES, 0), output
    assert status == 0, output


def test_load_checked_enough(load_run):
    _, summary, output = load_run
    assert summary["restarts"] == 1, output
    assert summary["terminations"] >= 1, output
    assert summary["grants"] >= GRANTS_PER_SECOND_FLOOR * SECONDS, output
    assert summary["accepted_writes"] >= 1, output
    assert all(summary["properties"][name]["checked"] > 0 for name in PROPERTIES), output
    assert summary["properties"]["durable"]["parts"].get("leases over a restart", 0) >= 1, output
    assert summary["properties"]["tokens"]["parts"].get("tokens after a restart", 0) >= 1, output


def test_checker_catches_every_injected_fault(load_run):
    _, summary, output = load_run
    assert [(t["property"], t["caught"]) for t in summary["self_test"]] == [(p, True) for p in PROPERTIES], output


def test_checker_catches_writes_without_a_fence(tmp_path):
    status, summary, output = run_load(tmp_path, "load-unfenced", 8, "--restarts", "0", "--unfenced")
    violations = {name: p["violations"] for name, p in summary["properties"].items()}
    assert violations["fencing"] > 0, output
    assert {name: n for name, n in violations.items() if name != "fencing"} == dict.fromkeys(
        ["exclusive", "tokens", "durable", "errors"], 0), output
    assert status == 1, output
