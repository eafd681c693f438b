"""Self-test of tests/valgrind/collect.py on hand-written valgrind logs: a report with a frame
in lease.so fails the run, suppressed reports are only counted, the error list that -s repeats
after the summary is not counted twice, and crashes fail the run. run.sh runs it first.

    .venv/bin/pytest -q tests/valgrind/test_collect.py
"""

import pathlib
import subprocess
import sys

COLLECT = pathlib.Path(__file__).with_name("collect.py")

POSTGRES_ONLY = """\
==100== VALGRINDERROR-BEGIN
==100== Syscall param pwrite64(buf) points to uninitialised byte(s)
==100==    at 0x58CF483: pwrite (pwrite64.c:25)
==100==    by 0x2F760F: XLogFlush (in /usr/lib/postgresql/15/bin/postgres)
==100==  Uninitialised value was created by a stack allocation
==100==    at 0x2A26C3: heap_multi_insert (in /usr/lib/postgresql/15/bin/postgres)
==100==
==100== VALGRINDERROR-END
"""

IN_EXTENSION = """\
==200== VALGRINDERROR-BEGIN
==200== Conditional jump or move depends on uninitialised value(s)
==200==    at 0x8B1234: lease::waiting::waits_for (waiting.rs:38)
==200==    by 0x8B2345: lease_acquire_wrapper (api.rs:120)
==200==    by 0x3F0000: ExecInterpExpr (in /usr/lib/postgresql/15/bin/postgres)
==200==
==200== VALGRINDERROR-END
"""

ORIGIN_IN_EXTENSION = """\
==300== VALGRINDERROR-BEGIN
==300== Syscall param sendto(msg) points to uninitialised byte(s)
==300==    at 0x58D0000: send (send.c:28)
==300==    by 0x500000: pq_flush (in /usr/lib/postgresql/15/bin/postgres)
==300==  Uninitialised value was created by a heap allocation
==300==    at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)
==300==    by 0x8B0000: ??? (in /usr/lib/postgresql/15/lib/lease.so)
==300==
==300== VALGRINDERROR-END
"""


def summary(pid, errors, contexts, suppressed, suppressed_contexts, used=""):
    return (f"=={pid}== ERROR SUMMARY: {errors} errors from {contexts} contexts "
            f"(suppressed: {suppressed} from {suppressed_contexts})\n{used}")


def run(tmp_path, logs, server_log=""):
    for pid, text in logs.items():
        (tmp_path / f"valgrind.{pid}.log").write_text(text)
    (tmp_path / "server.log").write_text(server_log)
    result = subprocess.run(
        [sys.executable, COLLECT, "--logs", tmp_path, "--reports", tmp_path / "reports.txt",
         "--server-log", tmp_path / "server.log"],
        capture_output=True, text=True,
    )
    return result.returncode, result.stdout.splitlines()[-1], result.stdout


def test_only_suppressed_reports_pass(tmp_path):
    used = "--100-- used_suppression:     39 pg-wal-write-struct-padding /x/postgres.supp:20\n"
    code, last, out = run(tmp_path, {100: summary(100, 0, 0, 39, 2, used), 101: summary(101, 0, 0, 3, 1)})
    assert code == 0
    assert last == ("valgrind: 0 error reports involving lease.so, 3 suppressed PostgreSQL-internal reports "
                    "(42 errors), 0 other unsuppressed reports, 0 crashes")
    assert "suppressed by pg-wal-write-struct-padding: 39" in out


def test_a_report_with_an_extension_frame_fails_once_per_distinct_stack(tmp_path):
    logs = {pid: IN_EXTENSION.replace("==200==", f"=={pid}==") + summary(pid, 1, 1, 0, 0) for pid in (200, 201)}
    code, last, _ = run(tmp_path, logs)
    assert code == 1
    assert last.startswith("valgrind: 1 error reports involving lease.so, 0 suppressed")
    assert "lease::waiting::waits_for (waiting.rs:38)" in (tmp_path / "reports.txt").read_text()
    assert "2 processes" in (tmp_path / "reports.txt").read_text()


def test_an_origin_in_the_extension_counts_as_the_extensions(tmp_path):
    code, last, _ = run(tmp_path, {300: ORIGIN_IN_EXTENSION + summary(300, 1, 1, 0, 0)})
    assert code == 1
    assert last.startswith("valgrind: 1 error reports involving lease.so")


def test_an_unsuppressed_postgres_report_fails_as_other(tmp_path):
    code, last, _ = run(tmp_path, {100: POSTGRES_ONLY + summary(100, 1, 1, 0, 0)})
    assert code == 1
    assert last.endswith("0 error reports involving lease.so, 0 suppressed PostgreSQL-internal reports "
                         "(0 errors), 1 other unsuppressed reports, 0 crashes")


def test_the_list_repeated_after_the_summary_is_not_counted(tmp_path):
    text = IN_EXTENSION + summary(200, 1, 1, 0, 0) + "==200== 1 errors in context 1 of 1:\n" + POSTGRES_ONLY
    code, last, _ = run(tmp_path, {200: text})
    assert code == 1
    assert ", 0 other unsuppressed reports," in last


def test_crashes_fail_the_run(tmp_path):
    fatal = "==400== Process terminating with default action of signal 11 (SIGSEGV)\n" + summary(400, 0, 0, 0, 0)
    server = "2026-01-01 00:00:00 UTC [1] LOG:  server process (PID 401) was terminated by signal 6: Aborted\n"
    code, last, _ = run(tmp_path, {400: fatal}, server)
    assert code == 1
    assert last.endswith("0 other unsuppressed reports, 2 crashes")
