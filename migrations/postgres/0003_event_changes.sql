-- referral-relay PostgreSQL schema, version 3: what each feed entry changed.

-- The referral's summary fields (their JSON names) a delivery changed, as the feed shows them.
-- Names only, never values: the feed is not sealed. Empty for entries stored before version 3.
ALTER TABLE events ADD COLUMN changes text[] NOT NULL DEFAULT '{}';
