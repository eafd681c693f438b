-- lease 0.6.0 -> 0.7.0: lease_release_each, the release of many leases in one call. A fresh
-- install of 0.7.0 runs this file too (after the 0.6.0 step).
\echo Use "ALTER EXTENSION lease UPDATE TO '0.7.0'" to load this file. \quit

CREATE FUNCTION lease_release_each(resources text[], tokens bigint[])
RETURNS SETOF text VOLATILE ROWS 10 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_release_each_wrapper';
COMMENT ON FUNCTION lease_release_each(text[], bigint[]) IS
'Releases each listed resource held with the token at the same position of tokens, in the order given, and returns the resources it released; one whose token no longer holds it is left out. Each release is a fence as lease_release is: until the calling transaction ends nobody else can be granted a returned resource, so work completed in the same transaction for exactly those resources (a queue''s batch) is fenced. The arrays must have the same length and no NULL elements; an empty array releases nothing.';
