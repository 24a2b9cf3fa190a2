-- referral-relay PostgreSQL schema, version 4: destinations' outgoing queues.

-- Each referral version queued for a destination (`queue`, its name), in the same statement
-- as the delivery that stored it (or by a backfill). `record` is the sealed `QueuedMessage`;
-- `state` and `next_attempt_at` repeat the record's so replicas can claim due messages (a claim
-- moves `next_attempt_at` on by a lease, under FOR UPDATE SKIP LOCKED). Only a referral's oldest
-- open (pending or dead) message in a queue is ever due: order is kept per referral.
CREATE TABLE queue (
    id              bigserial   PRIMARY KEY,
    queue           text        NOT NULL,
    referral        text        NOT NULL,
    version         bigint      NOT NULL,
    state           text        NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    record          bytea       NOT NULL
);
CREATE INDEX queue_due ON queue (queue, next_attempt_at) WHERE state = 'pending';
CREATE INDEX queue_open ON queue (queue, referral, id) WHERE state IN ('pending', 'dead');
CREATE INDEX queue_by_state ON queue (queue, state, id);
CREATE INDEX queue_by_referral ON queue (referral, id);

-- Queues an operator paused: nothing of theirs is claimed until resumed.
CREATE TABLE queue_paused (
    queue text PRIMARY KEY
);
