"""Reads the per-process logs of a valgrind run (tests/valgrind/run.sh) and sorts the error
reports that were not suppressed into those that involve the extension and the others.

A report involves the extension when any of its stacks (the error's, the allocation's or the
origin's) has a frame in lease.so: a frame of Rust source (`file.rs:line`, all Rust code in the
server is the extension's) or one valgrind names by the object `lease.so`. The reports
PostgreSQL itself is known to produce are suppressed (tests/valgrind/postgres.supp) and only
counted, from each process's ERROR SUMMARY line.

Writes every distinct unsuppressed report once (with the processes it came from) to
--reports, prints the counts and the summary line, and exits non-zero if any report involves
the extension, any other report was not suppressed, or a process crashed.

    python tests/valgrind/collect.py --logs DIR --reports FILE [--server-log FILE]
"""

import argparse
import pathlib
import re
import sys
from collections import Counter

PREFIX = re.compile(r"^(?:==|--)\d+(?:==|--) ?")
FRAME = re.compile(r"^\s+(?:at|by) 0x[0-9A-F]+: (?P<function>.+?) \((?P<where>.*)\)$")
SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors from (\d+) contexts \(suppressed: (\d+) from (\d+)\)")
USED_SUPPRESSION = re.compile(r"used_suppression:\s+(\d+) (\S+)")
FATAL_SIGNAL = re.compile(r"Process terminating with default action of signal (\d+) \((\w+)\)")
SERVER_CRASH = re.compile(r"terminated by signal|terminated by exception|PANIC:")


def is_extension_frame(where):
    return bool(re.search(r"\.rs:\d+$", where)) or where.endswith("/lease.so")


class Report:
    """One error report as valgrind printed it, without the `==pid==` prefixes."""

    def __init__(self, lines):
        self.lines = lines
        self.frames = [m for m in (FRAME.match(line) for line in lines) if m]

    @property
    def title(self):
        return self.lines[0].strip()

    def involves_extension(self):
        return any(is_extension_frame(frame["where"]) for frame in self.frames)

    def signature(self):
        """What identifies the report across processes: its kind and its stack's functions."""
        stack = []
        for line in self.lines[1:]:
            match = FRAME.match(line)
            if not match:
                break
            stack.append(match["function"])
        return (self.title, tuple(stack))


def read_log(path):
    """The reports, the ERROR SUMMARY counts, the suppressions used and the fatal signal."""
    reports, current = [], None
    summary, fatal = None, None
    used = Counter()
    for raw in path.read_text(errors="replace").splitlines():
        line = PREFIX.sub("", raw)
        if summary is not None and not line.startswith("used_suppression:"):
            continue  # after the summary, -s lists the same reports again
        if line.strip() == "VALGRINDERROR-BEGIN":
            current = []
        elif line.strip() == "VALGRINDERROR-END":
            if current:
                reports.append(Report(current))
            current = None
        elif current is not None:
            if line.strip():
                current.append(line)
        elif match := SUMMARY.search(line):
            summary = tuple(int(n) for n in match.groups())
        elif match := USED_SUPPRESSION.search(line):
            used[match[2]] += int(match[1])
        elif match := FATAL_SIGNAL.search(line):
            fatal = f"signal {match[1]} ({match[2]})"
    return reports, summary, used, fatal


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", required=True, type=pathlib.Path)
    parser.add_argument("--reports", required=True, type=pathlib.Path)
    parser.add_argument("--server-log", type=pathlib.Path)
    args = parser.parse_args()

    distinct = {}  # signature -> (report, [log names])
    suppressed_errors = suppressed_contexts = processes = unfinished = 0
    used = Counter()
    crashes = []
    for path in sorted(args.logs.glob("valgrind.*.log")):
        processes += 1
        reports, summary, process_used, fatal = read_log(path)
        for report in reports:
            distinct.setdefault(report.signature(), (report, []))[1].append(path.name)
        if summary is None:
            unfinished += 1
        else:
            suppressed_errors += summary[2]
            suppressed_contexts += summary[3]
        used.update(process_used)
        if fatal:
            crashes.append(f"{path.name}: {fatal}")
    if args.server_log and args.server_log.exists():
        crashes += [line for line in args.server_log.read_text(errors="replace").splitlines()
                    if SERVER_CRASH.search(line)]

    extension = [(r, logs) for r, logs in distinct.values() if r.involves_extension()]
    other = [(r, logs) for r, logs in distinct.values() if not r.involves_extension()]
    with args.reports.open("w") as out:
        for heading, group in (("involving lease.so", extension), ("not involving lease.so", other)):
            for number, (report, logs) in enumerate(group, 1):
                out.write(f"### report {number} {heading}: {len(logs)} processes, e.g. {logs[0]}\n")
                out.write("\n".join(report.lines) + "\n\n")

    print(f"processes: {processes} ({unfinished} without an ERROR SUMMARY: still running or killed)")
    for name, count in sorted(used.items()):
        print(f"  suppressed by {name}: {count}")
    for crash in crashes:
        print(f"  crash: {crash}")
    if distinct:
        print(f"  distinct unsuppressed reports written to {args.reports}")
    print(f"valgrind: {len(extension)} error reports involving lease.so, {suppressed_contexts} suppressed "
          f"PostgreSQL-internal reports ({suppressed_errors} errors), {len(other)} other unsuppressed "
          f"reports, {len(crashes)} crashes")
    return 1 if extension or other or crashes else 0


if __name__ == "__main__":
    sys.exit(main())
