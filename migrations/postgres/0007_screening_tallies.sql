-- referral-relay PostgreSQL schema, version 7: how often each screening rule fired.

-- One row per (UTC day, External Service ID, rule, card indicator); `rule` 'screened' counts
-- the referrals screened, by the most urgent card each got ('none' for none). No patient or
-- referral data.
CREATE TABLE screening_tallies (
    day        date   NOT NULL,
    service_id text   NOT NULL,
    rule       text   NOT NULL,
    indicator  text   NOT NULL,
    count      bigint NOT NULL,
    PRIMARY KEY (day, service_id, rule, indicator)
);
