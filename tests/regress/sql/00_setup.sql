-- Installs the extension and the roles the other files use.
CREATE EXTENSION lease;
CREATE ROLE lease_alice LOGIN;
CREATE ROLE lease_bob LOGIN;
CREATE ROLE lease_team;
GRANT lease_team TO lease_alice;
GRANT lease_team TO lease_bob;
-- Every rejected call in these tests goes through this helper: it runs one statement and
-- returns its SQLSTATE and message, or 'ok' and the result.
CREATE FUNCTION public.attempt(statement text) RETURNS TABLE(sqlstate text, message text)
LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    EXECUTE statement INTO result;
    RETURN QUERY SELECT 'ok'::text, result;
EXCEPTION WHEN OTHERS THEN
    RETURN QUERY SELECT SQLSTATE::text, SQLERRM::text;
END $$;
GRANT EXECUTE ON FUNCTION public.attempt(text) TO PUBLIC;
\dx lease
SELECT p.oid::regprocedure AS function, pg_get_function_result(p.oid) AS returns
FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lease')
ORDER BY p.oid::regprocedure::text;
