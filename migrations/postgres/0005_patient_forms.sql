-- referral-relay PostgreSQL schema, version 5: eForms patients completed (Patient Engagement).

-- One row per notification Ocean sent to a [patient_engagement.NAME] endpoint, recorded before
-- it is acknowledged. `dedup` is the SHA-256 of (endpoint, type, patient ref, session): the same
-- notification sent again finds its row. `record` is the sealed `PatientFormRecord`; `content`
-- what was fetched from Ocean, decrypted, then sealed; `state` and `next_attempt_at` repeat the
-- record's so replicas can claim due rows (a claim moves `next_attempt_at` on by a lease, under
-- FOR UPDATE SKIP LOCKED); `received_at` is retention's cutoff. Ids are given under an advisory
-- lock in the recording transaction, so they commit in order and the API's feed never skips one.
CREATE TABLE patient_forms (
    id              bigint      PRIMARY KEY,
    dedup           text        NOT NULL UNIQUE,
    state           text        NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    purged          boolean     NOT NULL DEFAULT false,
    record          bytea       NOT NULL,
    content         bytea
);
CREATE INDEX patient_forms_due ON patient_forms (next_attempt_at) WHERE state = 'pending';
CREATE INDEX patient_forms_received ON patient_forms (received_at) WHERE NOT purged;
ALTER TABLE patient_forms ALTER COLUMN content SET STORAGE EXTERNAL;
