-- referral-relay PostgreSQL schema, version 6: the web console's sessions, shared by replicas.

-- One row per signed-in session, keyed by the SHA-256 of its id (the id itself is only in the
-- user's cookie). `record` is the `ConsoleSessionRecord` as JSON; `account`, `created_at` and
-- `last_used_at` repeat its fields for ending an account's sessions and purging expired ones.
CREATE TABLE console_sessions (
    id_digest    text        PRIMARY KEY,
    account      text        NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    record       jsonb       NOT NULL
);
CREATE INDEX console_sessions_account ON console_sessions (account);

-- When each console account last looked at the referral list.
CREATE TABLE console_visits (
    account text        PRIMARY KEY,
    at      timestamptz NOT NULL
);
