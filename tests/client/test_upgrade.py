"""The upgrade path: a database created at the previous version, holding leases, is updated with
ALTER EXTENSION lease UPDATE; its leases, tokens and API keep working, and it ends up with the
same objects as a fresh install of the current version."""

import psycopg
import pytest

from conftest import connect, one, wait_for

# Every earlier version: 0.1.0 is installed from its own script, each later one from it and the steps.
OLD_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0")

# Every object of the extension, with what an upgrade must get right: signatures, results,
# volatility, security, settings, ACLs, comments, view definitions, columns, indexes.
CATALOG = """
SELECT 'function ' || p.oid::regprocedure || ' -> ' || pg_get_function_result(p.oid)
       || ' ' || p.provolatile::text || p.prosecdef::text || ' ' || coalesce(p.proconfig::text, '')
       || ' acl=' || coalesce(p.proacl::text, '') || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '')
       || ' args=' || pg_get_function_arguments(p.oid)
FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lease') AND d.deptype = 'e'
UNION ALL
SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' acl=' || coalesce(c.relacl::text, '')
       || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '')
       || ' view=' || coalesce(pg_get_viewdef(c.oid), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'lease'
UNION ALL
SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' notnull=' || a.attnotnull
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'lease' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'lease'
ORDER BY 1
"""


@pytest.fixture
def databases():
    names = ("lease_upgrade_old", "lease_upgrade_fresh")
    with connect() as admin:
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.execute(f"CREATE DATABASE {name}")
    yield names
    with connect() as admin:
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("old_version", OLD_VERSIONS)
def test_update_keeps_leases_and_tokens_and_matches_a_fresh_install(databases, old_version):
    old_db, fresh_db = databases
    with connect(dbname=old_db) as conn:
        conn.execute(f"CREATE EXTENSION lease VERSION '{old_version}'")
        assert one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'lease'") == old_version
        held = one(conn, "SELECT lease_acquire('upgrade:held', 'old-holder', '1 hour')")
        fenced = one(conn, "SELECT lease_acquire('upgrade:fenced', 'old-holder', '1 hour')")
        # What the later steps add does not exist before them.
        if old_version < "0.3.0":
            with pytest.raises(psycopg.errors.UndefinedFunction):
                conn.execute("SELECT lease_acquire_any(ARRAY['x'], 'h', snapshot_consistent => true)")
        if old_version < "0.4.0":
            with pytest.raises(psycopg.errors.UndefinedColumn):
                conn.execute("SELECT events_dropped FROM lease.stats")
        if old_version < "0.5.0":
            with pytest.raises(psycopg.errors.UndefinedFunction):
                conn.execute("SELECT lease_lifeline_open('x')")
        if old_version < "0.6.0":
            for call in ("lease_acquire_all(ARRAY['x'], 'h')", "lease_acquire('x', 'h', mode => 'shared')"):
                with pytest.raises(psycopg.errors.UndefinedFunction):
                    conn.execute(f"SELECT * FROM {call}")
        if old_version < "0.7.0":
            with pytest.raises(psycopg.errors.UndefinedFunction):
                conn.execute("SELECT * FROM lease_release_each(ARRAY['x'], ARRAY[1::bigint])")
        # Until the update, this library serves the old table with the old calls: grants,
        # renewals, releases, fences, expiry and the sweep.
        gone = one(conn, "SELECT lease_acquire('upgrade:gone', 'old-holder', '1 hour')")
        assert one(conn, "SELECT lease_renew('upgrade:gone', %s, '2 hours')", (gone,)) is True
        assert one(conn, "SELECT lease_check('upgrade:gone', %s)", (gone,)) is True
        assert one(conn, "SELECT lease_release('upgrade:gone', %s)", (gone,)) is True
        short = one(conn, "SELECT lease_acquire('upgrade:short', 'old-holder', '1 ms')")
        wait_for(lambda: one(conn, "SELECT count(*) FROM lease_info('upgrade:short')") == 0, what="expiry")
        assert one(conn, "SELECT lease_sweep()") == 1
        again = one(conn, "SELECT lease_acquire('upgrade:short', 'old-holder', '1 hour')")
        assert again > short

        conn.execute("ALTER EXTENSION lease UPDATE")
        current = one(conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'lease'")
        assert one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'lease'") == current != old_version

        # Leases and tokens survived, and the old API works on them.
        assert conn.execute("SELECT holder, token FROM lease_info('upgrade:held')").fetchall() == [
            ("old-holder", held)
        ]
        assert one(conn, "SELECT lease_check('upgrade:held', %s)", (held,)) is True
        assert one(conn, "SELECT lease_acquire('upgrade:held', 'old-holder', '1 hour')") == held
        assert one(conn, "SELECT lease_renew('upgrade:held', %s, '2 hours')", (held,)) is True
        assert one(conn, "SELECT lease_acquire('upgrade:held', 'someone-else')") is None
        # New tokens continue the same sequence.
        claimed = conn.execute(
            "SELECT resource, token FROM lease_acquire_any(ARRAY['upgrade:held', 'upgrade:new'], 'new-holder')"
        ).fetchall()
        assert [resource for resource, _ in claimed] == ["upgrade:new"]
        assert claimed[0][1] > max(held, fenced)
        assert conn.execute(
            "SELECT resource FROM lease_acquire_any(ARRAY['upgrade:new', 'upgrade:newer'], 'new-holder', "
            "max_count => 2, snapshot_consistent => true)"
        ).fetchall() == [("upgrade:newer",)]
        # The fencing trigger of the new version protects a table with a lease taken before the update.
        conn.execute("CREATE TABLE protected (resource text, token bigint, value int)")
        conn.execute(
            "CREATE TRIGGER fence BEFORE INSERT OR UPDATE OR DELETE ON protected FOR EACH ROW "
            "EXECUTE FUNCTION lease_fence('resource', 'token')"
        )
        conn.execute("INSERT INTO protected VALUES ('upgrade:fenced', %s, 1)", (fenced,))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("INSERT INTO protected VALUES ('upgrade:fenced', %s, 2)", (held,))
        # The new calls work on leases taken before the update.
        lifeline = one(conn, "SELECT lease_lifeline_open('upgraded')")
        assert one(conn, "SELECT lease_acquire('upgrade:fenced', 'old-holder', lifeline => %s)", (lifeline,)) == fenced
        assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
        # A shared lease or a permit is refused on a resource whose exclusive lease was taken
        # before the update, and granted on others.
        assert one(conn, "SELECT lease_acquire('upgrade:held', 'reader', mode => 'shared')") is None
        assert one(conn, "SELECT lease_acquire('upgrade:held', 'worker', capacity => 2)") is None
        shared = one(conn, "SELECT lease_acquire('upgrade:shared', 'reader', mode => 'shared')")
        assert shared > fenced
        permit = one(conn, "SELECT lease_acquire('upgrade:permits', 'worker', capacity => 2)")
        assert permit > fenced
        claimed = conn.execute(
            "SELECT resource, token FROM lease_acquire_all(ARRAY['upgrade:held', 'upgrade:all'], 'old-holder')"
        ).fetchall()
        assert claimed[0] == ("upgrade:held", held) and claimed[1][0] == "upgrade:all"
        # lease_release_each releases a lease taken before the update and those taken after it, in
        # the order given; a stale token and a name listed again release nothing.
        assert [r for r, in conn.execute(
            "SELECT * FROM lease_release_each(ARRAY['upgrade:short', 'upgrade:shared', 'upgrade:permits', "
            "'upgrade:held', 'upgrade:all', 'upgrade:short'], ARRAY[%s, %s, %s, %s, %s, %s]::bigint[])",
            (again, shared, permit, short, claimed[1][1], again),
        )] == ["upgrade:short", "upgrade:shared", "upgrade:permits", "upgrade:all"]
        assert conn.execute(
            "SELECT resource, token FROM lease.leases WHERE resource IN ('upgrade:short', 'upgrade:shared', "
            "'upgrade:permits', 'upgrade:held', 'upgrade:all')"
        ).fetchall() == [("upgrade:held", held)]
        assert one(conn, "SELECT lease_release('upgrade:held', %s, keep_for => '1 hour')", (held,)) is True
        assert one(conn, "SELECT lease_acquire('upgrade:held', 'old-holder')") is None
        conn.execute("DELETE FROM lease.leases WHERE resource = 'upgrade:held'")
        conn.execute("DELETE FROM lease.capacities")
        conn.execute("DROP TABLE protected")
        upgraded = [row[0] for row in conn.execute(CATALOG).fetchall()]
        # The leases and the token sequence are part of a dump after the update.
        assert sorted(
            conn.execute(
                "SELECT array_agg(c::regclass::text) FROM pg_extension, unnest(extconfig) AS c WHERE extname = 'lease'"
            ).fetchone()[0]
        ) == ["lease.capacities", "lease.leases", "lease.lifelines", "lease.token_seq"]

    with connect(dbname=fresh_db) as conn:
        conn.execute("CREATE EXTENSION lease")
        fresh = [row[0] for row in conn.execute(CATALOG).fetchall()]

    assert upgraded == fresh
