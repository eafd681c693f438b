"""Benchmark report: turns the results of bench/run.sh into one Markdown page and one chart.

Usage: report.py [RESULTS_DIR=bench/results]   (bench/report.sh runs the benchmarks, then this)

Reads from RESULTS_DIR: core.md, queue.md, expiry.md, waiting.md (the tables the benchmarks
print), expiry.json and waiting.json (every latency sample; without them the latency panels
show the tables' percentiles only) and machine.txt (machine and server settings; without it the
machine running this script is described). Parts whose file is missing are left out.
Writes RESULTS_DIR/report.md and RESULTS_DIR/report.png."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
CORE_VARIANTS = [  # (column in core.md, label in the chart)
    ("lease (cycles/s)", "lease, nobody listening"),
    ("lease, a client listening", "lease, a client listening"),
    ("lease, lease.notify = off", "lease, notify off"),
    ("ShedLock's schema", "ShedLock's schema"),
    ("hand-written table", "hand-written table"),
    ("advisory locks", "advisory locks"),
]
QUEUE_VARIANTS = [
    ("lease queue (jobs/s)", "lease queue"),
    ("SKIP LOCKED queue (jobs/s)", "SKIP LOCKED queue"),
    ("lease, batch completed in one call (jobs/s)", "lease, batch completed at once"),
    ("SKIP LOCKED, batch completed in one update (jobs/s)", "SKIP LOCKED, batch completed at once"),
]
SECTIONS = [  # (file, heading, what the benchmark does)
    ("core.md", "Acquire + release cycles",
     "One acquire and one release per cycle on a random resource out of 100,000 (pgbench), against "
     "ShedLock's schema, a hand-written lease table and PostgreSQL's advisory locks."),
    ("cost.md", "What a cycle costs the server",
     "Measures that do not move with the machine's speed: the instructions of the backend that runs "
     "the cycles (callgrind), pages touched and WAL per cycle (`bench/core/cost.sh`)."),
    ("queue.md", "Queue: lease_acquire_any against SKIP LOCKED",
     "8 workers claim 10 jobs at a time from a 100,000-job queue and complete each with a fenced update, "
     "or the whole batch in one statement (`bench/queue/`)."),
    ("expiry.md", "Expiry", "From each lease's `expires_at` to its `expired` notification (`bench/events/expiry.py`)."),
    ("waiting.md", "Waiting and handover",
     "From a release's commit to the waiting client's `lease_acquire` returning, against a client polling "
     "every 50 ms (`bench/waiting/handover.py`)."),
    ("checks.md", "Guarantees checked on the benchmarked build",
     "The randomized model test and the load checker, run on the build these figures come from."),
]


def read(name):
    path = RESULTS / name
    return path.read_text() if path.exists() else None


def markdown_tables(text):
    """Every table in a Markdown text, as a list of {header: cell} rows."""
    tables, lines = [], []
    for line in (text or "").splitlines() + [""]:
        if line.startswith("|"):
            lines.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif lines:
            header, rows = lines[0], [row for row in lines[1:] if not set("".join(row)) <= set("-:")]
            tables.append([dict(zip(header, row)) for row in rows])
            lines = []
    return tables


def number(cell):
    """The leading number of a cell such as '1.03 ms' or '6599'."""
    return float(cell.split()[0].replace(",", ""))


def measures(table, column):
    """{measure: value} from a two-column 'measure' table."""
    return {row["measure"]: row[column] for row in table}


def samples(name):
    text = read(name)
    return json.loads(text) if text else {}


def machine():
    """(description lines, settings lines) from machine.txt, else from this machine."""
    text = read("machine.txt")
    if text:
        fields, settings = {}, []
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == "setting":
                settings.append(value)
            else:
                fields[key] = value
        return fields, settings
    with open("/proc/meminfo") as meminfo:
        kib = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal")))
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                   platform.processor())
    version = subprocess.run(["/usr/lib/postgresql/15/bin/postgres", "--version"], capture_output=True,
                             text=True).stdout.split()[2:3]  # "postgres (PostgreSQL) 15.20 (Debian ...)"
    fields = {"cpu": cpu, "cpus": str(os.cpu_count()), "memory": f"{kib / 1048576:.1f} GiB",
              "postgresql": " ".join(version), "note": "machine.txt missing: this describes the machine "
              "that made the report, not necessarily the one that ran the benchmarks"}
    return fields, []


def bar_groups(ax, groups, series, title, ylabel):
    """Grouped bars: groups along x, one bar per series {label: [value per group]}."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.2)
    ax.legend(fontsize=7, loc="upper left")


def core_panel(ax, rows, sync):
    rows = [row for row in rows if row["synchronous_commit"] == sync]
    groups = [f"{row['clients']} client{'s' if row['clients'] != '1' else ''}" for row in rows]
    # Results from before a variant existed lack its column.
    series = {label: [number(row[column]) for row in rows] for column, label in CORE_VARIANTS if column in rows[0]}
    bar_groups(ax, groups, series, f"Acquire + release, synchronous_commit = {sync}", "cycles per second")


def queue_panel(ax, rows):
    groups = [f"synchronous_commit = {row['synchronous_commit']}" for row in rows]
    series = {label: [number(row[column]) for row in rows] for column, label in QUEUE_VARIANTS}
    bar_groups(ax, groups, series, "Queue: 8 workers, 10 jobs per claim", "jobs per second")


def percentile_points(table, column, prefix):
    """[(fraction, ms)] for the p50/p99/max rows of a latency table whose measures start with prefix."""
    points = []
    for measure, value in measures(table, column).items():
        if measure.startswith(prefix):
            tag = measure[len(prefix):].split()[0]
            fraction = 1.0 if tag == "max" else int(tag[1:]) / 100
            points.append((fraction, number(value)))
    return sorted(points)


def expiry_panel(ax, table, values):
    points = dict((f, ms) for f, ms in percentile_points(table, "value", "expiry latency "))
    if values:
        ax.hist(values, bins=60, color="tab:blue", alpha=0.8)
        ax.set_ylabel("expired leases")
        ax.set_yscale("log")
        title = f"Expiry latency: expires_at to notification ({len(values)} leases)"
    else:
        title = "Expiry latency (percentiles only: no samples file)"
        ax.set_yticks([])
    for fraction, style in ((0.5, "-"), (0.99, "--"), (1.0, ":")):
        if fraction in points:
            name = "max" if fraction == 1.0 else f"p{fraction * 100:.0f}"
            ax.axvline(points[fraction], color="black", linestyle=style, label=f"{name} {points[fraction]:.2f} ms")
    ax.set_xlabel("milliseconds")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def cdf(ax, values, label, **style):
    values = sorted(values)
    ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
            label=f"{label} (p50 {values[len(values) // 2]:.2f} ms)", **style)


def handover_panel(ax, tables, data):
    if data:
        cdf(ax, data["waiting_ms"], "waiting acquire: release to next holder")
        cdf(ax, data["polling_ms"], "polling every 50 ms: release to next holder")
        cdf(ax, data["terminated_ms"], "holder's session terminated to next holder", linestyle="--")
        title = "Handover latency (every sample)"
    else:
        title = "Handover latency (percentiles only: no samples file)"
        for column, label in (("waiting acquire", "waiting acquire"), ("polling every 50 ms", "polling every 50 ms")):
            points = percentile_points(tables[0], column, "handover latency ")
            ax.plot([ms for _, ms in points], [f for f, _ in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_ylabel("fraction of handovers at most this late")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def chart(path):
    core, queue = markdown_tables(read("core.md")), markdown_tables(read("queue.md"))
    expiry, waiting = markdown_tables(read("expiry.md")), markdown_tables(read("waiting.md"))
    figure = plt.figure(figsize=(16, 9.5), layout="constrained")
    grid = figure.add_gridspec(2, 6)
    top = [figure.add_subplot(grid[0, 2 * i:2 * i + 2]) for i in range(3)]
    bottom = [figure.add_subplot(grid[1, 3 * i:3 * i + 3]) for i in range(2)]
    if core:
        for ax, sync in zip(top, ("on", "off")):
            core_panel(ax, core[0], sync)
    if queue:
        queue_panel(top[2], queue[0])
    if expiry:
        expiry_panel(bottom[0], expiry[0], samples("expiry.json").get("expiry_latency_ms"))
    if waiting:
        handover_panel(bottom[1], waiting, samples("waiting.json"))
    for ax in top + bottom:
        if not ax.has_data():
            ax.set_axis_off()
    figure.suptitle("lease benchmarks (bench/report.sh)")
    figure.savefig(path, dpi=110)


def report(path, chart_name):
    fields, settings = machine()
    lines = ["# Benchmark report", ""]
    lines.append(f"- Machine: {fields.get('cpu', '?')}, {fields.get('cpus', '?')} CPUs, {fields.get('memory', '?')} memory")
    lines.append(f"- PostgreSQL {fields.get('postgresql', '?')}; extension: {fields.get('extension', '?')}")
    if "date" in fields:
        lines.append(f"- Run: {fields['date']}; {fields.get('seconds per run', '?')} s per pgbench run; throughput "
                     f"figures are medians of {fields.get('rounds', '?')} interleaved runs")
    if "note" in fields:
        lines.append(f"- Note: {fields['note']}")
    if settings:
        lines.append("- Server settings (besides the defaults; `synchronous_commit` and `lease.notify` vary "
                     "as the tables say): " + ", ".join(f"`{s}`" for s in settings))
    lines += ["", f"![Benchmark chart]({chart_name})", ""]
    for name, heading, summary in SECTIONS:
        text = read(name)
        if text:
            lines += [f"## {heading}", "", summary, "", text.strip(), ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    if not read("core.md"):
        sys.exit(f"no core.md in {RESULTS}: run bench/run.sh first")
    chart(RESULTS / "report.png")
    report(RESULTS / "report.md", "report.png")
    print(f"wrote {RESULTS / 'report.md'} and {RESULTS / 'report.png'}")
