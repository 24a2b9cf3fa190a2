-- referral-relay PostgreSQL schema, version 1. Released migrations are never edited: a change is
-- a new file with the next number.
--
-- Records are the relay's own JSON, kept in bytea beside the columns that index them. Payloads
-- are the bytes as received, LZ4-compressed by the relay behind a format tag (as in the embedded
-- store), so PostgreSQL stores them out of line without compressing them again (its own pglz took
-- several milliseconds per 30 KB Bundle).

CREATE TABLE referrals (
    referral    text        PRIMARY KEY,
    -- 0 while the first delivery's transaction is writing it (never visible committed as 0).
    version     bigint      NOT NULL,
    modified_at timestamptz NOT NULL,
    record      bytea       NOT NULL
);
CREATE INDEX referrals_by_modified ON referrals (modified_at, referral);

-- The feed. `id` is insert order, which is not commit order: concurrent transactions commit out
-- of `id` order, so a reader following `id` could pass an id whose transaction commits later and
-- never see it. `seq`, the feed position, is assigned after commit by the sequencer (one at a
-- time across every replica, under an advisory lock), to rows already committed; so the rows
-- with a `seq` are always a gap-free prefix of the feed. See src/store/postgres/sequencer.rs.
CREATE TABLE events (
    id          bigserial   PRIMARY KEY,
    seq         bigint      UNIQUE,
    referral    text        NOT NULL,
    version     bigint      NOT NULL,
    event       text        NOT NULL,
    service_id  text,
    received_at timestamptz NOT NULL
);
CREATE INDEX events_unsequenced ON events (id) WHERE seq IS NULL;
CREATE INDEX events_by_received ON events (received_at);

CREATE TABLE versions (
    referral text   NOT NULL REFERENCES referrals (referral),
    version  bigint NOT NULL,
    event_id bigint NOT NULL REFERENCES events (id),
    record   bytea  NOT NULL,
    -- NULL once retention purged it.
    payload  bytea,
    PRIMARY KEY (referral, version)
);
ALTER TABLE versions ALTER COLUMN payload SET STORAGE EXTERNAL;

-- One row per delivery ever stored: the unique key makes a delivery posted to two replicas at
-- once stored once (the second insert waits for the first transaction, then finds the row).
CREATE TABLE deliveries (
    dedup_key text   PRIMARY KEY,
    referral  text   NOT NULL,
    version   bigint NOT NULL
);

-- The audit chain. Like the feed, `seq`, `prev` and `hash` are given by the sequencer after
-- commit, so entries from every replica form one chain in one order.
CREATE TABLE audit (
    id      bigserial   PRIMARY KEY,
    seq     bigint      UNIQUE,
    at      timestamptz NOT NULL,
    action  text        NOT NULL,
    actor   text        NOT NULL,
    details jsonb       NOT NULL,
    prev    text,
    hash    text
);
CREATE INDEX audit_unchained ON audit (id) WHERE seq IS NULL;

-- The outbox to Ocean. `record` is the update as the relay keeps it (its `id` is the row's).
CREATE TABLE updates (
    id       bigserial PRIMARY KEY,
    referral text      NOT NULL,
    state    text      NOT NULL,
    record   bytea     NOT NULL
);
CREATE INDEX updates_by_referral ON updates (referral, id);
CREATE INDEX updates_open ON updates (id) WHERE state IN ('pending', 'dead');

-- What the updates accepted so far told Ocean about each referral's Task.
CREATE TABLE task_states (
    referral text  PRIMARY KEY,
    record   bytea NOT NULL
);

-- A row `check_writable` writes: proves the database takes writes now.
CREATE TABLE relay_ready (
    replica text        PRIMARY KEY,
    at      timestamptz NOT NULL
);
