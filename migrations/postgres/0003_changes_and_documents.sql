-- referral-relay PostgreSQL schema, version 3: what each feed entry changed, and documents.

-- The referral's summary fields (their JSON names) a delivery changed, as the feed shows them.
-- Names only, never values: the feed is not sealed. Empty for entries stored before version 3.
ALTER TABLE events ADD COLUMN changes text[] NOT NULL DEFAULT '{}';

-- The documents kept with each referral version: its letter (idx 0) and attachments (from 1),
-- queued pending in the same statement as the delivery that named them. `record` is the
-- sealed `DocumentRecord`; `bytes` what Ocean served, sealed; `state` and `next_attempt_at`
-- repeat the record's so replicas can claim due documents (a claim moves `next_attempt_at` on
-- by a lease).
CREATE TABLE documents (
    referral        text        NOT NULL,
    version         bigint      NOT NULL,
    idx             integer     NOT NULL,
    state           text        NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    record          bytea       NOT NULL,
    bytes           bytea,
    PRIMARY KEY (referral, version, idx)
);
CREATE INDEX documents_due ON documents (next_attempt_at) WHERE state = 'pending';
ALTER TABLE documents ALTER COLUMN bytes SET STORAGE EXTERNAL;
