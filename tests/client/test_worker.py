"""The expiry worker: visible, restarted after it is terminated, sweeps on time, and the sweep
never removes a lease that a renew extended."""

from conftest import Listener, connect, one, wait_for, worker_pid


def test_worker_is_visible_and_restarted_after_termination(conn):
    pid = wait_for(lambda: worker_pid(conn), what="the worker")
    assert one(conn, "SELECT backend_type FROM pg_stat_activity WHERE pid = %s", (pid,)) == "lease expirer"
    assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    new_pid = wait_for(lambda: (worker_pid(conn) or pid) != pid and worker_pid(conn), timeout=20,
                       what="the worker to be restarted")
    assert new_pid != pid
    # and it works: a short lease is swept and announced
    listener = Listener()
    try:
        token = one(conn, "SELECT lease_acquire('worker:after-restart', 'h', '20 ms')")
        events = listener.until(lambda got: any(e["resource"] == "worker:after-restart" for e in got[1:]) or
                                len([e for e in got if e["resource"] == "worker:after-restart"]) == 2)
        assert [(e["event"], e["token"]) for e in events if e["resource"] == "worker:after-restart"] == [
            ("acquired", token),
            ("expired", token),
        ]
    finally:
        listener.close()


def test_sweep_removes_only_expired_leases(conn):
    with connect(autocommit=False) as tx:
        # In one transaction the worker cannot see these rows, so the sweep below is ours.
        short = [one(tx, "SELECT lease_acquire(%s, 'h', '1 ms')", (f"sweep:short:{i}",)) for i in range(5)]
        long = one(tx, "SELECT lease_acquire('sweep:long', 'h', '1 hour')")
        tx.execute("SELECT pg_sleep(0.01)")
        assert one(tx, "SELECT lease_sweep()") == 5
        assert one(tx, "SELECT lease_sweep()") == 0
        assert one(tx, "SELECT count(*) FROM lease.leases WHERE resource LIKE 'sweep:%%'") == 1
        assert short and long
        tx.rollback()


def test_sweep_does_not_remove_a_lease_renewed_meanwhile(conn):
    token = one(conn, "SELECT lease_acquire('sweep:renewed', 'h', '150 ms')")
    with connect(autocommit=False) as renewer:
        assert one(renewer, "SELECT lease_renew('sweep:renewed', %s, '1 hour')", (token,)) is True
        # The worker's sweep must leave the renewed lease alone, before and after this commits.
        renewer.commit()
    wait_for(lambda: one(conn, "SELECT clock_timestamp() > acquired_at + interval '300 ms' FROM lease.leases "
                               "WHERE resource = 'sweep:renewed'"), what="the original expiry to pass")
    assert one(conn, "SELECT lease_sweep()") >= 0
    assert one(conn, "SELECT token FROM lease_info('sweep:renewed')") == token
    assert one(conn, "SELECT lease_release('sweep:renewed', %s)", (token,)) is True
