-- trempy.table_shape: the one description of a table, used by the full load, the relation
-- extras and the schema-change trigger: replicated columns in order (dropped and generated ones
-- left out), exact types with modifiers, NOT NULL, and the key (the replica identity index,
-- else the primary key).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS trempy;
CREATE SCHEMA regress_shape;
CREATE TYPE regress_shape.mood AS ENUM ('sad', 'ok');
CREATE TABLE regress_shape."Odd ""name""" (
    id bigint PRIMARY KEY,
    "Mixed Case" numeric(12,2) NOT NULL,
    gone int,
    tags text[],
    code varchar(3),
    feeling regress_shape.mood,
    doubled bigint GENERATED ALWAYS AS (id * 2) STORED
);
ALTER TABLE regress_shape."Odd ""name""" DROP COLUMN gone;
SELECT c ->> 'attnum' AS attnum, c ->> 'name' AS name, c ->> 'type' AS type, c ->> 'key' AS key, c ->> 'not_null' AS not_null
  FROM jsonb_array_elements(trempy.table_shape('regress_shape."Odd ""name"""'::regclass)::jsonb -> 'columns') AS c;
SELECT s ->> 'schema' AS schema, s ->> 'table' AS table
  FROM (SELECT trempy.table_shape('regress_shape."Odd ""name"""'::regclass)::jsonb) AS x(s);
-- whatever the caller's search_path: types stay schema-qualified where they need it
SET search_path = regress_shape, public;
SELECT c ->> 'name' AS name, c ->> 'type' AS type
  FROM jsonb_array_elements(trempy.table_shape('"Odd ""name"""'::regclass)::jsonb -> 'columns') AS c
 WHERE c ->> 'name' = 'feeling';
RESET search_path;
-- a replica identity index is the key, also beside a primary key
CREATE TABLE regress_shape.both_keys (id int PRIMARY KEY, code text NOT NULL, v text);
CREATE UNIQUE INDEX both_keys_code ON regress_shape.both_keys (code);
ALTER TABLE regress_shape.both_keys REPLICA IDENTITY USING INDEX both_keys_code;
SELECT c ->> 'name' AS name, c ->> 'key' AS key
  FROM jsonb_array_elements(trempy.table_shape('regress_shape.both_keys'::regclass)::jsonb -> 'columns') AS c;
-- no key at all
CREATE TABLE regress_shape.keyless (a int, b text);
SELECT c ->> 'name' AS name, c ->> 'key' AS key
  FROM jsonb_array_elements(trempy.table_shape('regress_shape.keyless'::regclass)::jsonb -> 'columns') AS c;
DROP SCHEMA regress_shape CASCADE;
