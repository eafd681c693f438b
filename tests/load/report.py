"""The run's report: a Markdown page for people and a JSON summary for the test. Used by checker.py."""

import json
from collections import Counter

from properties import MAX_SHOWN, PROPERTIES
from workload import CONNECTION_LOST, EXPECTED


def label(op):
    """What an operation answered, in a word."""
    if op.error_class == CONNECTION_LOST:
        return "connection lost"
    if op.error_class == EXPECTED:
        return f"error {op.sqlstate}"
    if op.error_class is not None:
        return f"UNEXPECTED {op.sqlstate}"
    if op.kind in ("acquire", "reacquire"):
        return "granted" if op.result is not None else "null"
    if op.kind == "write":
        return "accepted" if op.result is not None else "refused"
    if op.kind == "pause":
        return "slept"
    return str(op.result).lower()


def parts(result):
    return ", ".join(f"{part}: {count}" for part, count in result.parts.items())


def grants_count(run):
    return len({op.result for op in run.ops if op.kind == "acquire" and op.result is not None and op.outcome == "committed"})


def summary(config, run, results, elapsed, self_test=None):
    return {
        "seconds": round(elapsed, 1),
        "sessions": config.sessions,
        "operations": len(run.ops),
        "grants": grants_count(run),
        "accepted_writes": len(run.writes),
        "terminations": len(run.terminations),
        "restarts": len(run.restarts),
        "properties": {name: {"checked": r.checked, "parts": r.parts, "violations": len(r.violations)}
                       for name, r in results.items()},
        "violations": sum(len(r.violations) for r in results.values()),
        "self_test": self_test,
    }


def operations_table(run):
    counts = Counter((op.kind, op.variant if op.kind != "reacquire" else "", label(op), op.outcome) for op in run.ops)
    rows = sorted({key[:3] for key in counts})
    lines = ["| operation | variant | answer | calls | committed | aborted | outcome unknown |",
             "|---|---|---|---:|---:|---:|---:|"]
    for kind, variant, answer in rows:
        cells = [counts[(kind, variant, answer, outcome)] for outcome in ("committed", "aborted", "unknown")]
        total = sum(cells) if kind != "pause" else counts[(kind, variant, answer, "")]
        shown = [str(c) for c in cells] if kind != "pause" else ["-"] * 3
        lines.append(f"| {kind} | {variant} | {answer} | {total} | " + " | ".join(shown) + " |")
    return lines


def faults_lines(run):
    lines = [f"- backends terminated with `pg_terminate_backend`: {len(run.terminations)}"]
    for number, restart in enumerate(run.restarts, 1):
        lines.append(f"- crash {number}: `pg_ctl stop -m immediate` at {restart.before:%H:%M:%S.%f}, "
                     f"server back after {restart.seconds_down:.1f} s with {len(restart.snapshot)} leases "
                     f"of this run in its table")
    return lines


def markdown(config, run, results, elapsed, self_test=None):
    data = summary(config, run, results, elapsed, self_test)
    lines = [
        "# Lease load run",
        "",
        f"- duration: {data['seconds']} s (asked {config.seconds} s), {config.sessions} sessions, seed {config.seed}",
        f"- resources: {config.resources} with ttls of 100-300 ms, {config.long_resources} with ttls of 5-20 s",
        f"- operations: {data['operations']}; distinct tokens granted and committed: {data['grants']}; "
        f"fenced writes accepted: {data['accepted_writes']}",
        "",
        "## Operations",
        "",
        *operations_table(run),
        "",
        "## Faults injected",
        "",
        *faults_lines(run),
        "",
        "## Properties",
        "",
        "| property | items checked | of which | violations |",
        "|---|---:|---|---:|",
        *[f"| {PROPERTIES[name]} | {r.checked} | {parts(r)} | {len(r.violations)} |" for name, r in results.items()],
        "",
    ]
    for name, result in results.items():
        if result.violations:
            lines += [f"### Violations of {PROPERTIES[name]}", ""]
            lines += [f"- {v}" for v in result.violations[:MAX_SHOWN]]
            if len(result.violations) > MAX_SHOWN:
                lines.append(f"- ... and {len(result.violations) - MAX_SHOWN} more")
            lines.append("")
    if self_test is not None:
        lines += ["## Self-test: broken copies of this record", "",
                  "| injected fault | property expected to catch it | caught |", "|---|---|---|"]
        lines += [f"| {t['fault']} | {t['property']} | {'yes' if t['caught'] else 'NO'} |" for t in self_test]
        lines.append("")
    return "\n".join(lines), data


def write(config, run, results, elapsed, self_test=None):
    text, data = markdown(config, run, results, elapsed, self_test)
    if config.report:
        with open(config.report, "w") as out:
            out.write(text)
    if config.json:
        with open(config.json, "w") as out:
            json.dump(data, out, indent=2)
    return text, data
