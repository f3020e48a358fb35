-- Sample schema of the TREMpy demo (scripts/dev.sh demo).
--
-- Loaded unchanged into both the source and the target database: the target needs the same
-- tables, columns and primary keys. Idempotent: safe to load any number of times.

CREATE SCHEMA IF NOT EXISTS shop;

-- A mixed-case table name, to show that identifiers are quoted all the way through.
CREATE TABLE IF NOT EXISTS shop."Customers" (
    id         bigint PRIMARY KEY,
    name       text,
    email      text,
    created_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS shop.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint,
    amount      numeric(12, 2),
    status      text,
    note        text
);
