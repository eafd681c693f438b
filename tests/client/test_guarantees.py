"""Regression tests for the holes in the guarantees reported in issue 13, one test (or one
parametrized family) per defect:

- item 2, the direct path: with an audit trigger on lease.leases every call (acquire,
  re-acquire, renew, release, force_release, lease_acquire_any, an expired takeover, the sweep)
  logs exactly the rows its SQL statement would, at READ COMMITTED (where the direct path is
  used) as at REPEATABLE READ (always SQL); row-level security (no effect while the table's
  owner is a superuser; applied as SQL applies it when the owner is an ordinary role), a CHECK
  constraint, a foreign key referencing the table, an added column and a changed or narrowed
  column type are honoured as SQL honours them; a column added by another session while a
  backend that used the API is in a transaction does not crash the server; and a
  pg_repack-style log-and-replay copy of the table stays equal to it;
- item 3: a rolled-back release never unbinds a live session-bound lease;
- item 4: an ALTER SEQUENCE on the token sequence left open stalls only the grants that need the
  sequence, and they stay cancellable (statement_timeout, pg_cancel_backend);
- item 7: the launcher and the expiry worker come back after pg_terminate_backend, and expiry
  still works;
- item 10a: a wait longer than 24.8 days is ended by statement_timeout like any other;
- item 6: pg_dump / pg_restore (the real binaries) keep the live leases and the token sequence,
  into a new database and into one where the extension was created first.

Every test uses resources named 'g:<test>:...' and restores whatever it changes; a test that
changes the shape of lease.leases in a way that cannot be undone in place (a dropped column
stays in the catalog) recreates the extension afterwards, as conftest does at session start.
"""

import os

import psycopg
import pytest
from psycopg import sql

from conftest import (
    PG_BIN,
    PORT,
    Background,
    Listener,
    as_root,
    connect,
    one,
    wait_for,
    worker_pid,
)
from test_durability import server_accepts

SESSION_LOCK_SPACE = 0x4C53
ISOLATIONS = ["read committed", "repeatable read"]


def sqlstate_of(raised):
    return getattr(raised.value, "sqlstate", None)


# --- the shape of lease.leases, and putting it back -------------------------------------------

def table_shape(conn):
    """Everything about lease.leases that these tests change."""
    return {
        "columns": conn.execute(
            "SELECT attnum, attname, format_type(atttypid, atttypmod), attnotnull, attisdropped, attcollation "
            "FROM pg_attribute WHERE attrelid = 'lease.leases'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall(),
        "rls": conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'lease.leases'::regclass"
        ).fetchone(),
        "owners": conn.execute(
            "SELECT relname, relowner::regrole::text, relacl::text FROM pg_class "
            "WHERE relnamespace = 'lease'::regnamespace AND relkind IN ('r', 'S') ORDER BY 1"
        ).fetchall(),
        "triggers": conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'lease.leases'::regclass ORDER BY 1"
        ).fetchall(),
        "policies": conn.execute(
            "SELECT polname FROM pg_policy WHERE polrelid = 'lease.leases'::regclass ORDER BY 1"
        ).fetchall(),
        "constraints": conn.execute(
            "SELECT conname, contype FROM pg_constraint "
            "WHERE conrelid = 'lease.leases'::regclass OR confrelid = 'lease.leases'::regclass ORDER BY 1"
        ).fetchall(),
        "views": conn.execute(
            "SELECT c.relname, pg_get_viewdef(c.oid), c.reloptions, c.relacl::text, obj_description(c.oid, 'pg_class'), "
            "       EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
            "               AND d.objid = c.oid AND d.deptype = 'e') "
            "FROM pg_class c WHERE c.relnamespace = 'lease'::regnamespace AND c.relkind = 'v' ORDER BY 1"
        ).fetchall(),
    }


def views_using(conn, column):
    """The views of the extension that use `column` of lease.leases, with what it takes to
    create each again as it is."""
    return conn.execute(
        "SELECT DISTINCT c.oid::regclass::text, pg_get_viewdef(c.oid), c.reloptions, "
        "       obj_description(c.oid, 'pg_class'), "
        "       ARRAY(SELECT a.privilege_type || ' ' || CASE a.grantee WHEN 0 THEN 'PUBLIC' "
        "                    ELSE quote_ident(a.grantee::regrole::text) END "
        "             FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner ORDER BY 1) "
        "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
        "  AND d.refobjid = 'lease.leases'::regclass AND c.oid <> 'lease.leases'::regclass "
        "  AND d.refobjsubid = (SELECT attnum FROM pg_attribute "
        "                       WHERE attrelid = 'lease.leases'::regclass AND attname = %s) "
        "ORDER BY 1",
        (column,),
    ).fetchall()


def drop_views(conn, views):
    for name, *_ in views:
        conn.execute(f"ALTER EXTENSION lease DROP VIEW {name}")
        conn.execute(f"DROP VIEW {name}")


def create_views(conn, views):
    for name, definition, options, comment, grants in views:
        with_options = f" WITH ({', '.join(options)})" if options else ""
        conn.execute(f"CREATE VIEW {name}{with_options} AS {definition.rstrip().rstrip(';')}")
        for grant in grants:
            privilege, grantee = grant.split(" ", 1)
            conn.execute(f"GRANT {privilege} ON {name} TO {grantee}")
        if comment is not None:
            conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(sql.SQL(name), sql.Literal(comment)))
        conn.execute(f"ALTER EXTENSION lease ADD VIEW {name}")


def recreate_extension(conn):
    """What conftest's session fixture does: the table exactly as created, a worker serving."""
    conn.execute("DROP EXTENSION IF EXISTS lease CASCADE")
    conn.execute("CREATE EXTENSION lease")
    conn.execute("SELECT lease_release('test-setup', lease_acquire('test-setup', 'setup'))")
    wait_for(lambda: worker_pid(conn) is not None, what="the expiry worker")


@pytest.fixture(autouse=True)
def table_as_created():
    """Each test leaves lease.leases as it found it; what cannot be undone in place (a dropped
    column stays in pg_attribute) is undone by recreating the extension."""
    with connect() as admin:
        before = table_shape(admin)
    yield
    with connect() as admin:
        if table_shape(admin) != before:
            recreate_extension(admin)
            assert table_shape(admin) == before


# --- one pass over every call, with its expected answers --------------------------------------

def wait_expired(conn, resource):
    wait_for(lambda: one(conn, "SELECT clock_timestamp() > expires_at FROM lease.leases WHERE resource = %s",
                         (resource,)), what=f"{resource} to expire")


def exercise(conn, prefix):
    """Runs every call that changes a lease once on resources prefix + a..e, asserting each
    answer; returns the tokens. The expired takeover and the sweep run inside a transaction so
    that the expiry worker (which cannot see uncommitted rows) does not sweep first."""
    a, b, c, d, e = (prefix + name for name in "abcde")
    t = {}
    t["a"] = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (a,))
    assert isinstance(t["a"], int) and t["a"] > 0
    assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (a,)) is None
    assert one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (a,)) == t["a"]
    assert one(conn, "SELECT lease_renew(%s, %s, '2 min')", (a, t["a"] + 1_000_000)) is False
    assert one(conn, "SELECT lease_renew(%s, %s, '2 min')", (a, t["a"])) is True
    assert one(conn, "SELECT lease_release(%s, %s)", (a, t["a"] + 1_000_000)) is False
    assert one(conn, "SELECT lease_release(%s, %s)", (a, t["a"])) is True
    assert one(conn, "SELECT lease_release(%s, %s)", (a, t["a"])) is False

    t["b"] = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (b,))
    assert t["b"] > t["a"]
    assert one(conn, "SELECT lease_force_release(%s)", (b,)) is True
    assert one(conn, "SELECT lease_force_release(%s)", (b,)) is False

    claimed = conn.execute("SELECT resource, token FROM lease_acquire_any(%s, 'h', '1 min')", ([c],)).fetchall()
    assert [r for r, _ in claimed] == [c]
    t["c"] = claimed[0][1]
    assert t["c"] > t["b"]
    assert one(conn, "SELECT lease_release(%s, %s)", (c, t["c"])) is True

    with conn.transaction():
        t["d1"] = one(conn, "SELECT lease_acquire(%s, 'first', '1 ms')", (d,))
        wait_expired(conn, d)
        t["d2"] = one(conn, "SELECT lease_acquire(%s, 'second', '1 min')", (d,))
        assert t["d2"] > t["d1"]
    assert one(conn, "SELECT lease_check(%s, %s)", (d, t["d1"])) is False
    assert one(conn, "SELECT lease_release(%s, %s)", (d, t["d2"])) is True

    with conn.transaction():
        t["e"] = one(conn, "SELECT lease_acquire(%s, 'h', '1 ms')", (e,))
        wait_expired(conn, e)
        assert one(conn, "SELECT lease_sweep()") >= 1
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (e,)) == 0
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = ANY (%s)", ([a, b, c, d, e],)) == 0
    return t


def expected_audit(prefix, t):
    a, b, c, d, e = (prefix + name for name in "abcde")
    return [
        ("INSERT", a, t["a"]),   # acquire
        ("UPDATE", a, t["a"]),   # re-acquire (extend)
        ("UPDATE", a, t["a"]),   # renew
        ("DELETE", a, t["a"]),   # release
        ("INSERT", b, t["b"]),   # acquire
        ("DELETE", b, t["b"]),   # force_release
        ("INSERT", c, t["c"]),   # lease_acquire_any
        ("DELETE", c, t["c"]),   # release
        ("INSERT", d, t["d1"]),  # acquire
        ("UPDATE", d, t["d2"]),  # expired takeover
        ("DELETE", d, t["d2"]),  # release
        ("INSERT", e, t["e"]),   # acquire
        ("DELETE", e, t["e"]),   # lease_sweep
    ]


def caller(isolation):
    conn = connect()
    conn.execute(f"SET default_transaction_isolation = '{isolation}'")
    return conn


# --- item 2: the direct path and what a SQL statement would honour ----------------------------

def create_row_logger(conn, function, table):
    """A trigger function `function` that logs (TG_OP, resource, token) of every row change of
    lease.leases into `table`."""
    conn.execute(f"""
        CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                INSERT INTO {table} (op, resource, token) VALUES (TG_OP, OLD.resource, OLD.token);
            ELSE
                INSERT INTO {table} (op, resource, token) VALUES (TG_OP, NEW.resource, NEW.token);
            END IF;
            RETURN NULL;
        END $$""")


def test_an_audit_trigger_sees_every_change_of_every_call(conn):
    conn.execute("DROP TABLE IF EXISTS public.g_audit")
    conn.execute("CREATE TABLE public.g_audit (id bigserial PRIMARY KEY, op text, resource text, token bigint)")
    create_row_logger(conn, "public.g_audit_row", "public.g_audit")
    try:
        with connect() as warm:  # a backend that used the direct path before the trigger came
            one(warm, "SELECT lease_release('g:audit:warm', lease_acquire('g:audit:warm', 'h'))")
            conn.execute("CREATE TRIGGER g_audit AFTER INSERT OR UPDATE OR DELETE ON lease.leases "
                         "FOR EACH ROW EXECUTE FUNCTION public.g_audit_row()")
            prefix = "g:audit:warm-backend:"
            tokens = exercise(warm, prefix)
            logged = conn.execute("SELECT op, resource, token FROM public.g_audit WHERE resource LIKE %s ORDER BY id",
                                  (prefix + "%",)).fetchall()
            assert logged == expected_audit(prefix, tokens)
        for isolation in ISOLATIONS:
            prefix = f"g:audit:{isolation}:"
            with caller(isolation) as c:
                tokens = exercise(c, prefix)
            logged = conn.execute("SELECT op, resource, token FROM public.g_audit WHERE resource LIKE %s ORDER BY id",
                                  (prefix + "%",)).fetchall()
            assert logged == expected_audit(prefix, tokens), isolation
    finally:
        conn.execute("DROP TRIGGER IF EXISTS g_audit ON lease.leases")
        conn.execute("DROP FUNCTION IF EXISTS public.g_audit_row()")
        conn.execute("DROP TABLE IF EXISTS public.g_audit")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_row_level_security_does_not_apply_to_a_table_owned_by_a_superuser(conn, isolation):
    """The extension is created by a superuser, so lease.leases is owned by one, and the API
    runs its table work as that owner: superusers bypass row-level security even when it is
    FORCEd, so the SQL statements see every row. Decided: on both paths a resource the
    restrictive policy hides is granted, excludes other holders, is re-acquired with its token
    and released, exactly as without the policies."""
    with connect() as setup:
        one(setup, "SELECT lease_release('g:rls:warm', lease_acquire('g:rls:warm', 'h'))")
    conn.execute("ALTER TABLE lease.leases ENABLE ROW LEVEL SECURITY")
    conn.execute("ALTER TABLE lease.leases FORCE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY g_all ON lease.leases USING (true)")
    conn.execute("CREATE POLICY g_hide ON lease.leases AS RESTRICTIVE "
                 "USING (resource NOT LIKE 'g:rls:hidden:%')")
    try:
        with caller(isolation) as c:
            for kind in ("hidden", "shown"):
                exercise(c, f"g:rls:{kind}:{isolation}:")
                resource = f"g:rls:{kind}:{isolation}:held"
                token = one(c, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
                assert token is not None
                with connect() as other:
                    assert one(other, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
                    assert one(other, "SELECT token FROM lease_info(%s)", (resource,)) == token
                assert one(c, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,)) == token
                assert one(c, "SELECT lease_check(%s, %s)", (resource, token)) is True
                assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 1
                assert one(c, "SELECT lease_release(%s, %s)", (resource, token)) is True
                assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
    finally:
        conn.execute("DROP POLICY IF EXISTS g_hide ON lease.leases")
        conn.execute("DROP POLICY IF EXISTS g_all ON lease.leases")
        conn.execute("ALTER TABLE lease.leases NO FORCE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE lease.leases DISABLE ROW LEVEL SECURITY")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_row_level_security_applies_as_to_sql_when_the_owner_is_an_ordinary_role(conn, isolation):
    """With lease.leases owned by an ordinary role and FORCE ROW LEVEL SECURITY, the policies
    apply to the API's own statements, which run as that owner. Decided: the API decides as
    its SQL statements do, on both paths. A grant of a hidden resource is a new row the
    restrictive policy rejects: 42501, nothing written, no token lost to anyone. A lease the
    policy hides once it exists cannot be seen: check, renew and release return false, and
    another holder's acquire fails with 42501 (it never takes the lease over). Resources the
    policies show work as always."""
    existing = f"g:rls:hidden:{isolation}:existing"
    before = one(conn, "SELECT lease_acquire(%s, 'h', '1 hour')", (existing,))
    conn.execute("DROP ROLE IF EXISTS g_rls_owner")
    conn.execute("CREATE ROLE g_rls_owner NOLOGIN")
    try:
        conn.execute("GRANT USAGE, UPDATE ON SEQUENCE lease.token_seq TO g_rls_owner")
        conn.execute("ALTER TABLE lease.leases OWNER TO g_rls_owner")
        # The extension's tables change owner together: the lease statements read lifelines.
        conn.execute("ALTER TABLE lease.lifelines OWNER TO g_rls_owner")
        conn.execute("ALTER TABLE lease.capacities OWNER TO g_rls_owner")
        conn.execute("ALTER TABLE lease.leases ENABLE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE lease.leases FORCE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY g_all ON lease.leases USING (true)")
        conn.execute("CREATE POLICY g_hide ON lease.leases AS RESTRICTIVE "
                     "USING (resource NOT LIKE 'g:rls:hidden:%')")
        with caller(isolation) as c:
            every_grant_fails(conn, c, f"g:rls:hidden:{isolation}:new", "42501")
            with pytest.raises(psycopg.Error) as raised:
                c.execute("SELECT lease_acquire(%s, 'other', '1 min')", (existing,))
            assert sqlstate_of(raised) == "42501"
            assert one(c, "SELECT lease_check(%s, %s)", (existing, before)) is False
            assert one(c, "SELECT lease_renew(%s, %s)", (existing, before)) is False
            assert one(c, "SELECT lease_release(%s, %s)", (existing, before)) is False
            assert conn.execute("SELECT holder, token FROM lease.leases WHERE resource = %s",
                                (existing,)).fetchall() == [("h", before)]
            exercise(c, f"g:rls:shown:{isolation}:owned:")
    finally:
        conn.execute("DROP POLICY IF EXISTS g_hide ON lease.leases")
        conn.execute("DROP POLICY IF EXISTS g_all ON lease.leases")
        conn.execute("ALTER TABLE lease.leases NO FORCE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE lease.leases DISABLE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE lease.leases OWNER TO postgres")
        conn.execute("ALTER TABLE lease.lifelines OWNER TO postgres")
        conn.execute("ALTER TABLE lease.capacities OWNER TO postgres")
        conn.execute("REVOKE ALL ON SEQUENCE lease.token_seq FROM g_rls_owner")
        conn.execute("DROP ROLE IF EXISTS g_rls_owner")
        kept = conn.execute("SELECT holder, token FROM lease_info(%s)", (existing,)).fetchall()
        one(conn, "SELECT lease_force_release(%s)", (existing,))
    # with the policies gone the lease is there as it was
    assert kept == [("h", before)]


def every_grant_fails(conn, c, resource, sqlstate):
    """Each way of granting `resource` on connection `c` (plain, session-bound, a claim) fails
    with `sqlstate` and leaves no row and no session lock behind."""
    pid = c.info.backend_pid
    for statement in (
        "SELECT lease_acquire(%s, 'h', '1 min')",
        "SELECT lease_acquire(%s, 'h', '1 min', NULL, true)",
        "SELECT count(*) FROM lease_acquire_any(ARRAY[%s], 'h', '1 min')",
    ):
        with pytest.raises(psycopg.Error) as raised:
            c.execute(statement, (resource,))
        assert sqlstate_of(raised) == sqlstate, statement
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
        assert one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = %s "
                         "AND pid = %s", (SESSION_LOCK_SPACE, pid)) == 0


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_check_constraint_rejects_the_grant_and_leaves_nothing(conn, isolation):
    forbidden = "g:check:forbidden"
    conn.execute("ALTER TABLE lease.leases ADD CONSTRAINT g_check CHECK (resource <> 'g:check:forbidden')")
    try:
        with caller(isolation) as c:
            one(c, "SELECT 1")
            every_grant_fails(conn, c, forbidden, "23514")
            # everything else still works under the constraint
            exercise(c, f"g:check:{isolation}:")
    finally:
        conn.execute("ALTER TABLE lease.leases DROP CONSTRAINT IF EXISTS g_check")
    # and with the constraint gone the resource can be granted: nothing was left behind
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (forbidden,))
    assert token is not None
    assert one(conn, "SELECT lease_release(%s, %s)", (forbidden, token)) is True


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_foreign_key_referencing_the_table_restricts_release(conn, isolation):
    resource = f"g:fk:{isolation}:referenced"
    conn.execute("DROP TABLE IF EXISTS public.g_fk_ref")
    conn.execute('CREATE TABLE public.g_fk_ref (resource text COLLATE "C" NOT NULL, slot integer NOT NULL DEFAULT 0, '
                 'FOREIGN KEY (resource, slot) REFERENCES lease.leases (resource, slot) ON DELETE RESTRICT)')
    try:
        with caller(isolation) as c:
            token = one(c, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
            conn.execute("INSERT INTO public.g_fk_ref VALUES (%s)", (resource,))
            for statement, params in (
                ("SELECT lease_release(%s, %s)", (resource, token)),
                ("SELECT lease_force_release(%s)", (resource,)),
            ):
                with pytest.raises(psycopg.Error) as raised:
                    c.execute(statement, params)
                assert sqlstate_of(raised) == "23503", statement
                # the lease is untouched and still held with its token
                assert one(conn, "SELECT token FROM lease_info(%s)", (resource,)) == token
                assert one(c, "SELECT lease_check(%s, %s)", (resource, token)) is True
            exercise(c, f"g:fk:{isolation}:")
            conn.execute("DELETE FROM public.g_fk_ref")
            assert one(c, "SELECT lease_release(%s, %s)", (resource, token)) is True
            assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
    finally:
        conn.execute("DROP TABLE IF EXISTS public.g_fk_ref")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_an_added_column_gets_its_default_and_the_api_keeps_working(conn, isolation):
    with caller(isolation) as c:
        # this backend used the API on the table as created
        one(c, "SELECT lease_release('g:addcol:warm', lease_acquire('g:addcol:warm', 'h'))")
        conn.execute("ALTER TABLE lease.leases ADD COLUMN note text DEFAULT 'x'")
        try:
            resource = f"g:addcol:{isolation}:held"
            token = one(c, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
            assert token is not None
            assert conn.execute("SELECT holder, token, note FROM lease.leases WHERE resource = %s",
                                (resource,)).fetchall() == [("h", token, "x")]
            assert one(c, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
            assert one(c, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,)) == token
            assert one(conn, "SELECT note FROM lease.leases WHERE resource = %s", (resource,)) == "x"
            exercise(c, f"g:addcol:{isolation}:")
            assert one(c, "SELECT lease_release(%s, %s)", (resource, token)) is True
        finally:
            conn.execute("ALTER TABLE lease.leases DROP COLUMN IF EXISTS note")
        # a dropped column stays in the catalog: the API still works on that table
        exercise(c, f"g:addcol:{isolation}:after-drop:")


@pytest.mark.parametrize("column, changed, created", [
    ("application_name", "varchar(200)", "text"),
    ("session_pid", "bigint", "integer"),
])
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_changed_column_type_is_honoured(conn, isolation, column, changed, created):
    """The extension's views use every column, so the ones using the column are taken out of the
    extension and dropped for the change, and put back afterwards as they were."""
    views = views_using(conn, column)
    assert "lease.active" in [name for name, *_ in views]
    with caller(isolation) as c:
        c.execute("SET application_name = 'g-app'")
        one(c, "SELECT lease_release('g:type:warm', lease_acquire('g:type:warm', 'h', '1 min', NULL, true))")
        drop_views(conn, views)
        try:
            conn.execute(f"ALTER TABLE lease.leases ALTER COLUMN {column} TYPE {changed}")
            resource = f"g:type:{column}:{isolation}:bound"
            token = one(c, "SELECT lease_acquire(%s, 'h', '1 min', NULL, true)", (resource,))
            assert token is not None
            row = conn.execute("SELECT holder, token, session_pid, application_name FROM lease.leases "
                               "WHERE resource = %s", (resource,)).fetchone()
            assert row == ("h", token, c.info.backend_pid, "g-app")
            assert one(c, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
            with connect() as other:
                assert one(other, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
            assert one(c, "SELECT lease_acquire(%s, 'h', '1 min', NULL, true)", (resource,)) == token
            exercise(c, f"g:type:{column}:{isolation}:")
            assert one(c, "SELECT lease_release(%s, %s)", (resource, token)) is True
            assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
        finally:
            conn.execute(f"ALTER TABLE lease.leases ALTER COLUMN {column} TYPE {created}")
            create_views(conn, views)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_narrowed_column_type_is_enforced_as_sql_enforces_it(conn, isolation):
    """application_name narrowed to varchar(5): a session-bound grant from a session whose
    application_name is longer is rejected as the INSERT would reject it (22001), leaving
    nothing; a plain grant (no application_name stored) and every other call work."""
    views = views_using(conn, "application_name")
    with caller(isolation) as c:
        c.execute("SET application_name = 'g-app-too-long'")
        one(c, "SELECT lease_release('g:narrow:warm', lease_acquire('g:narrow:warm', 'h', '1 min', NULL, true))")
        drop_views(conn, views)
        try:
            conn.execute("ALTER TABLE lease.leases ALTER COLUMN application_name TYPE varchar(5)")
            resource = f"g:narrow:{isolation}:bound"
            with pytest.raises(psycopg.Error) as raised:
                c.execute("SELECT lease_acquire(%s, 'h', '1 min', NULL, true)", (resource,))
            assert sqlstate_of(raised) == "22001"
            assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
            assert one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = %s "
                             "AND pid = %s", (SESSION_LOCK_SPACE, c.info.backend_pid)) == 0
            c.execute("SET application_name = 'g-ok'")
            token = one(c, "SELECT lease_acquire(%s, 'h', '1 min', NULL, true)", (resource,))
            assert conn.execute("SELECT token, application_name FROM lease.leases WHERE resource = %s",
                                (resource,)).fetchall() == [(token, "g-ok")]
            assert one(c, "SELECT lease_release(%s, %s)", (resource, token)) is True
            exercise(c, f"g:narrow:{isolation}:")
        finally:
            conn.execute("ALTER TABLE lease.leases ALTER COLUMN application_name TYPE text")
            create_views(conn, views)


def test_a_column_added_while_a_backend_is_in_a_transaction_does_not_crash_the_server(conn):
    bystander = connect()  # opened before: a crash (and the restart after it) would end it
    first = connect(autocommit=False)
    try:
        # the backend uses the API on the table as created, then opens a transaction
        held = one(first, "SELECT lease_acquire('g:ddl:held', 'h', '1 min')")
        assert one(first, "SELECT lease_check('g:ddl:held', %s)", (held,)) is True
        assert one(first, "SELECT lease_release('g:ddl:gone', lease_acquire('g:ddl:gone', 'h'))") is True
        first.commit()
        one(first, "SELECT 1")
        conn.execute("ALTER TABLE lease.leases ADD COLUMN note text")
        token = one(first, "SELECT lease_acquire('g:ddl:new', 'h', '1 min')")
        assert token is not None and token > held
        assert one(first, "SELECT lease_acquire('g:ddl:new', 'h', '1 min')") == token
        assert one(first, "SELECT lease_check('g:ddl:held', %s)", (held,)) is True
        assert one(first, "SELECT lease_release('g:ddl:held', %s)", (held,)) is True
        first.commit()
        assert conn.execute("SELECT holder, token, note FROM lease.leases WHERE resource = 'g:ddl:new'"
                            ).fetchall() == [("h", token, None)]
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = 'g:ddl:held'") == 0
        assert one(first, "SELECT lease_release('g:ddl:new', %s)", (token,)) is True
        first.commit()
        # the server stayed up: the session opened before still works
        assert one(bystander, "SELECT 1") == 1
        assert one(bystander, "SELECT count(*) FROM lease.leases WHERE resource LIKE 'g:ddl:%%'") == 0
    finally:
        first.close()
        bystander.close()
        # after a crash the server restarts: wait for it before putting the table back
        wait_for(server_accepts, timeout=60, what="the server to accept connections")
        with connect() as admin:
            admin.execute("ALTER TABLE lease.leases DROP COLUMN IF EXISTS note")
            for resource, token in admin.execute("SELECT resource, token FROM lease.leases "
                                                 "WHERE resource LIKE 'g:ddl:%'").fetchall():
                one(admin, "SELECT lease_release(%s, %s)", (resource, token))


def test_a_pg_repack_style_log_and_replay_copy_equals_the_table(conn):
    """pg_repack copies the table under a snapshot while a trigger logs every change, then
    replays the changes the copy missed. Acquires and releases made in that window (READ
    COMMITTED, the direct path) must all be logged, or the copy loses grants and brings
    released leases back."""
    conn.execute("DROP TABLE IF EXISTS public.g_repack_log, public.g_repack_copy")
    conn.execute("CREATE TABLE public.g_repack_log (id bigserial PRIMARY KEY, op text, resource text, token bigint)")
    conn.execute('CREATE TABLE public.g_repack_copy (resource text COLLATE "C" PRIMARY KEY, token bigint NOT NULL)')
    create_row_logger(conn, "public.g_repack_log_row", "public.g_repack_log")
    app = connect()
    try:
        # leases that exist before the repack starts (some are released during it)
        before = {f"g:repack:old:{n}": one(app, "SELECT lease_acquire(%s, 'h', '1 hour')", (f"g:repack:old:{n}",))
                  for n in range(10)}
        conn.execute("CREATE TRIGGER g_repack AFTER INSERT OR UPDATE OR DELETE ON lease.leases "
                     "FOR EACH ROW EXECUTE FUNCTION public.g_repack_log_row()")
        # the copy, and the log entries its snapshot already contains
        with connect(autocommit=False) as copier:
            copier.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            copier.execute("INSERT INTO public.g_repack_copy SELECT resource, token FROM lease.leases")
            seen = [i for (i,) in copier.execute("SELECT id FROM public.g_repack_log").fetchall()]
            copier.commit()
        # the window: grants and releases through the direct path
        during = {}
        for n in range(10):
            during[f"g:repack:new:{n}"] = one(app, "SELECT lease_acquire(%s, 'h', '1 hour')", (f"g:repack:new:{n}",))
        for n in range(0, 10, 2):
            assert one(app, "SELECT lease_release(%s, %s)", (f"g:repack:old:{n}", before[f"g:repack:old:{n}"])) is True
            assert one(app, "SELECT lease_release(%s, %s)", (f"g:repack:new:{n}", during[f"g:repack:new:{n}"])) is True
        assert one(app, "SELECT lease_acquire('g:repack:new:1', 'h', '1 hour')") == during["g:repack:new:1"]
        # replay what the copy missed, and compare, with writers held off as pg_repack's swap does
        with connect(autocommit=False) as replayer:
            replayer.execute("LOCK TABLE lease.leases IN SHARE MODE")
            log = replayer.execute("SELECT id, op, resource, token FROM public.g_repack_log ORDER BY id").fetchall()
            for id_, op, resource, token in log:
                if id_ in seen:
                    continue
                if op == "INSERT":
                    replayer.execute("INSERT INTO public.g_repack_copy VALUES (%s, %s)", (resource, token))
                elif op == "UPDATE":
                    replayer.execute("UPDATE public.g_repack_copy SET token = %s WHERE resource = %s", (token, resource))
                else:
                    replayer.execute("DELETE FROM public.g_repack_copy WHERE resource = %s", (resource,))
            copy = replayer.execute("SELECT resource, token FROM public.g_repack_copy ORDER BY 1").fetchall()
            table = replayer.execute("SELECT resource, token FROM lease.leases ORDER BY 1").fetchall()
            replayer.commit()
        mine = [row for row in table if row[0].startswith("g:repack:")]
        assert mine == sorted([(r, t) for r, t in before.items() if int(r.rsplit(":", 1)[1]) % 2] +
                              [(r, t) for r, t in during.items() if int(r.rsplit(":", 1)[1]) % 2])
        assert copy == table
    finally:
        conn.execute("DROP TRIGGER IF EXISTS g_repack ON lease.leases")
        conn.execute("DROP FUNCTION IF EXISTS public.g_repack_log_row()")
        conn.execute("DROP TABLE IF EXISTS public.g_repack_log, public.g_repack_copy")
        for resource, token in conn.execute("SELECT resource, token FROM lease.leases "
                                            "WHERE resource LIKE 'g:repack:%'").fetchall():
            one(conn, "SELECT lease_release(%s, %s)", (resource, token))
        app.close()


# --- item 3: a rolled-back release keeps the session binding ----------------------------------

def session_locks(conn, pid):
    return one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = %s AND pid = %s",
               (SESSION_LOCK_SPACE, pid))


def test_a_rolled_back_release_does_not_unbind_a_session_bound_lease(conn):
    names = [f"g:unbind:s{n}" for n in range(64)]
    a = connect(autocommit=False)
    try:
        pid = a.info.backend_pid
        tokens = {}
        for name in names:
            tokens[name] = one(a, "SELECT lease_acquire(%s, 'a', '1 hour', NULL, true)", (name,))
            a.commit()
        assert session_locks(conn, pid) == 64
        assert one(a, "SELECT lease_release('g:unbind:s1', %s)", (tokens["g:unbind:s1"],)) is True
        assert one(a, "SELECT lease_acquire('g:unbind:s64', 'a', '1 hour', NULL, true)") is not None
        a.rollback()
        assert conn.execute("SELECT holder, token, session_pid FROM lease.leases WHERE resource = 'g:unbind:s1'"
                            ).fetchall() == [("a", tokens["g:unbind:s1"], pid)]
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = 'g:unbind:s64'") == 0
        assert session_locks(conn, pid) == 64
        with connect() as b:
            assert one(b, "SELECT lease_acquire('g:unbind:s1', 'b', '1 min')") is None
            assert one(b, "SELECT token FROM lease_info('g:unbind:s1')") == tokens["g:unbind:s1"]
            a.close()
            token_b = wait_for(lambda: one(b, "SELECT lease_acquire('g:unbind:s1', 'b', '1 min')"),
                               timeout=20, what="b to get s1 after a's session ended")
            assert token_b > tokens["g:unbind:s1"]
            assert one(b, "SELECT lease_release('g:unbind:s1', %s)", (token_b,)) is True
    finally:
        a.close()
        for (resource,) in conn.execute("SELECT resource FROM lease.leases WHERE resource LIKE 'g:unbind:%'").fetchall():
            one(conn, "SELECT lease_force_release(%s)", (resource,))


# --- item 4: an ALTER SEQUENCE left open stalls nothing uncancellably -------------------------

def failure_sqlstate(call, timeout):
    """Joins `call` within `timeout`; returns the SQLSTATE it failed with (None if it returned)."""
    try:
        call.result(timeout)
    except psycopg.Error as error:
        return error.sqlstate
    return None


def test_an_open_alter_sequence_stalls_no_grant_uncancellably(conn):
    db = "g_seq_db"
    conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    conn.execute(f"CREATE DATABASE {db}")
    calls = []
    session1 = None
    try:
        with connect(dbname=db) as setup:
            setup.execute("CREATE EXTENSION lease")
            sequence = one(setup, "SELECT 'lease.token_seq'::regclass::oid")
        session1 = connect(dbname=db, autocommit=False)
        session1.execute("ALTER SEQUENCE lease.token_seq CACHE 1")  # and stays open

        def still_open():
            return (session1.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS and
                    one(conn, "SELECT state FROM pg_stat_activity WHERE pid = %s",
                        (session1.info.backend_pid,)) == "idle in transaction")

        # statement_timeout ends a grant that waits for the sequence
        def timed(c):
            c.execute("SET statement_timeout = '300ms'")
            return one(c, "SELECT lease_acquire('g:seq:a', 'h', '1 min')")
        calls.append(Background(timed, dbname=db))
        assert failure_sqlstate(calls[-1], 20) == "57014"
        assert still_open()

        # so does pg_cancel_backend
        cancelled = Background(lambda c: one(c, "SELECT lease_acquire('g:seq:b', 'h', '1 min')"), dbname=db)
        calls.append(cancelled)
        wait_for(lambda: one(conn, "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted "
                                   "AND locktype = 'relation' AND relation = %s", (cancelled.pid, sequence)) == 1,
                 timeout=20, what="the grant to wait for the token sequence")
        # meanwhile a grant in another database completes
        elsewhere = Background(lambda c: one(c, "SELECT lease_acquire('g:seq:postgres', 'h', '1 min')"))
        calls.append(elsewhere)
        token = elsewhere.result(20)
        assert token is not None
        assert one(conn, "SELECT lease_release('g:seq:postgres', %s)", (token,)) is True
        assert not cancelled.done()
        assert one(conn, "SELECT pg_cancel_backend(%s)", (cancelled.pid,)) is True
        assert failure_sqlstate(cancelled, 20) == "57014"
        assert still_open()

        session1.rollback()
        with connect(dbname=db) as c:
            assert one(c, "SELECT count(*) FROM lease.leases") == 0
            token = one(c, "SELECT lease_acquire('g:seq:after', 'h', '1 min')")
            assert token is not None and token > 0
            assert one(c, "SELECT lease_release('g:seq:after', %s)", (token,)) is True
    finally:
        if session1 is not None:
            session1.close()  # unsticks whatever still waits for the sequence
        for call in calls:
            if not call.done():
                call._thread.join(20)
            call.connection.close()
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# --- item 7: the workers heal ----------------------------------------------------------------

def launcher_pid(conn):
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease launcher'").fetchone()
    return row[0] if row else None


def test_the_launcher_and_the_expirer_come_back_after_termination(conn):
    launcher = wait_for(lambda: launcher_pid(conn), timeout=20, what="the launcher")
    assert one(conn, "SELECT pg_terminate_backend(%s)", (launcher,)) is True
    new_launcher = wait_for(lambda: (launcher_pid(conn) or launcher) != launcher and launcher_pid(conn),
                            timeout=20, what="a new launcher")
    assert new_launcher != launcher

    expirer = wait_for(lambda: worker_pid(conn), timeout=20, what="the expirer")
    assert one(conn, "SELECT pg_terminate_backend(%s)", (expirer,)) is True
    new_expirer = wait_for(lambda: (worker_pid(conn) or expirer) != expirer and worker_pid(conn),
                           timeout=20, what="a new expirer")
    assert new_expirer != expirer
    assert launcher_pid(conn) == new_launcher

    listener = Listener()
    try:
        token = one(conn, "SELECT lease_acquire('g:heal:short', 'h', '20 ms')")
        listener.until(lambda got: any(e["resource"] == "g:heal:short" and e["event"] == "expired" for e in got),
                       timeout=20, what="the expiry of g:heal:short")
        assert [(e["event"], e.get("reason"), e["token"]) for e in listener.events_for("g:heal:short")] == [
            ("acquired", None, token),
            ("expired", "ttl", token),
        ]
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = 'g:heal:short'") == 0
    finally:
        listener.close()


# --- item 10a: a wait of more than 24.8 days -------------------------------------------------

def test_a_wait_longer_than_24_8_days_is_ended_by_statement_timeout(conn):
    held = one(conn, "SELECT lease_acquire('g:longwait:r', 'holder', '1 min')")
    try:
        def long_wait(c):
            c.execute("SET statement_timeout = '200ms'")
            return one(c, "SELECT lease_acquire('g:longwait:r', 'x', '1 s', wait => '30 days')")
        call = Background(long_wait)
        assert failure_sqlstate(call, 20) == "57014"
        # the server is still up: this session, opened before, and a new one
        assert one(conn, "SELECT token FROM lease_info('g:longwait:r')") == held
        with connect() as fresh:
            assert one(fresh, "SELECT 1") == 1
            assert one(fresh, "SELECT count(*) FROM lease.active WHERE resource = 'g:longwait:r' AND waiters > 0") == 0
    finally:
        one(conn, "SELECT lease_release('g:longwait:r', %s)", (held,))


# --- item 6: pg_dump and pg_restore ----------------------------------------------------------

def client(program, *args):
    """Runs a PostgreSQL client program as root over TCP; returns the completed process."""
    return as_root(f"{PG_BIN}/{program}", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", *args, check=False)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """A database with 60 grants made (50 live leases, 10 released) and a fenced jobs table,
    dumped with pg_dump -Fc; yields what the restored databases must show."""
    db = "g_dump_src"
    path = str(tmp_path_factory.mktemp("dump") / "g_dump_src.dump")
    with connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {db}")
    try:
        with connect(dbname=db) as c:
            c.execute("CREATE EXTENSION lease")
            granted = []
            live = {}
            for n in range(49):
                resource = f"g:dump:live:{n}"
                live[resource] = one(c, "SELECT lease_acquire(%s, %s, '1 hour')", (resource, f"holder-{n}"))
                granted.append(live[resource])
            live["g:dump:job:1"] = one(c, "SELECT lease_acquire('g:dump:job:1', 'worker', '1 hour')")
            granted.append(live["g:dump:job:1"])
            released = {}
            for n in range(10):
                resource = f"g:dump:released:{n}"
                released[resource] = one(c, "SELECT lease_acquire(%s, 'h', '1 hour')", (resource,))
                granted.append(released[resource])
                assert one(c, "SELECT lease_release(%s, %s)", (resource, released[resource])) is True
            assert len(granted) == 60 and len(set(granted)) == 60
            # a lifeline with a lease attached, and a lease kept after its release
            lifeline = one(c, "SELECT lease_lifeline_open('dumped', '1 hour')")
            live["g:dump:attached"] = one(c, "SELECT lease_acquire('g:dump:attached', 'worker', lifeline => %s)",
                                          (lifeline,))
            kept = one(c, "SELECT lease_acquire('g:dump:kept', 'cron', '1 min')")
            assert one(c, "SELECT lease_release('g:dump:kept', %s, keep_for => '1 hour')", (kept,)) is True
            granted += [lifeline, live["g:dump:attached"], kept]
            # two readers of a shared lease, and two of three permits of a semaphore
            shared = [one(c, "SELECT lease_acquire('g:dump:shared', %s, '1 hour', mode => 'shared')", (h,))
                      for h in ("reader-1", "reader-2")]
            permits = [one(c, "SELECT lease_acquire('g:dump:permits', %s, '1 hour', capacity => 3)", (h,))
                       for h in ("worker-1", "worker-2")]
            granted += shared + permits
            c.execute("CREATE TABLE jobs (id int PRIMARY KEY, state text, lease_token bigint)")
            c.execute("CREATE TRIGGER jobs_fence BEFORE UPDATE OR DELETE ON jobs "
                      "FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'lease_token', 'g:dump:job:')")
            c.execute("INSERT INTO jobs VALUES (1, 'queued', NULL)")
            updated = c.execute("UPDATE jobs SET state = 'running', lease_token = %s WHERE id = 1",
                                (live["g:dump:job:1"],)).rowcount
            assert updated == 1
            rows = sorted(c.execute("SELECT resource, holder, token FROM lease.leases").fetchall())
            assert len(rows) == 56
        done = client("pg_dump", "-Fc", "-f", path, "-d", db)
        assert done.returncode == 0, done.stderr
        yield {"path": path, "rows": rows, "live": live, "released": released, "max_token": max(granted),
               "lifeline": lifeline, "shared": shared, "permits": permits}
    finally:
        with connect() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        if os.path.exists(path):
            os.remove(path)


@pytest.mark.parametrize("target", ["new-database", "extension-created-first", "extension-created-first-clean"])
def test_dump_and_restore_keep_the_leases_and_the_tokens(dumped, target):
    """Decided for a database where CREATE EXTENSION lease ran first (the extension unused):
    a plain `pg_restore -d` is clean (the dump's CREATE EXTENSION IF NOT EXISTS does nothing,
    the configuration data of lease.leases and lease.token_seq is loaded into the empty table
    and the sequence), and so is `pg_restore --clean --if-exists`; both give what a restore into
    a new database gives."""
    db = "g_dump_" + target.replace("-", "_")
    with connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {db}")
    try:
        options = []
        if target.startswith("extension-created-first"):
            with connect(dbname=db) as c:
                c.execute("CREATE EXTENSION lease")
            if target.endswith("-clean"):
                options = ["--clean", "--if-exists"]
        done = client("pg_restore", *options, "-d", db, dumped["path"])
        assert done.returncode == 0, done.stderr
        assert "error" not in done.stderr.lower(), done.stderr
        with connect(dbname=db) as c:
            assert one(c, "SELECT count(*) FROM pg_extension WHERE extname = 'lease'") == 1
            assert sorted(c.execute("SELECT resource, holder, token FROM lease.leases").fetchall()) == dumped["rows"]
            job_token = dumped["live"]["g:dump:job:1"]
            live = "g:dump:live:7"
            assert one(c, "SELECT lease_check(%s, %s)", (live, dumped["live"][live])) is True
            assert one(c, "SELECT lease_acquire(%s, 'intruder', '1 min')", (live,)) is None
            assert one(c, "SELECT lease_acquire(%s, 'holder-7', '1 hour')", (live,)) == dumped["live"][live]
            first = one(c, "SELECT lease_acquire('g:dump:after', 'h', '1 min')")
            assert first > dumped["max_token"]
            # the lifeline came along: its lease holds, it renews, and the kept lease is still kept
            attached = dumped["live"]["g:dump:attached"]
            assert one(c, "SELECT lease_check('g:dump:attached', %s)", (attached,)) is True
            assert one(c, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (dumped["lifeline"],)) == 1
            assert one(c, "SELECT lease_lifeline_renew(%s) > now()", (dumped["lifeline"],)) is True
            assert one(c, "SELECT lease_acquire('g:dump:kept', 'cron', '1 min')") is None
            assert one(c, "SELECT released_at IS NOT NULL FROM lease_info('g:dump:kept')") is True
            # the readers and the permits came along, with the declared capacity
            assert [one(c, "SELECT lease_check('g:dump:shared', %s)", (t,)) for t in dumped["shared"]] == [True, True]
            assert one(c, "SELECT lease_acquire('g:dump:shared', 'writer', '1 min')") is None
            assert one(c, "SELECT capacity FROM lease.capacities WHERE resource = 'g:dump:permits'") == 3
            third = one(c, "SELECT lease_acquire('g:dump:permits', 'worker-3', '1 min', mode => 'permit')")
            assert third > dumped["max_token"]
            assert one(c, "SELECT lease_acquire('g:dump:permits', 'worker-4', '1 min', mode => 'permit')") is None
            assert one(c, "SELECT lease_check('g:dump:permits', %s)", (dumped["permits"][0],)) is True
            # the fenced table: a stale token is rejected, the live one passes
            stale = dumped["released"]["g:dump:released:0"]
            with pytest.raises(psycopg.Error) as raised:
                c.execute("UPDATE jobs SET state = 'done', lease_token = %s WHERE id = 1", (stale,))
            assert sqlstate_of(raised) == "55000"
            assert c.execute("UPDATE jobs SET state = 'done', lease_token = %s WHERE id = 1",
                             (job_token,)).rowcount == 1
            assert c.execute("SELECT state, lease_token FROM jobs").fetchall() == [("done", job_token)]
    finally:
        with connect() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
