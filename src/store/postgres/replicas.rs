//! What replicas share through PostgreSQL beyond referrals: the token signing key (one row of
//! `relay_settings`, written by the first replica to need it) and failed logins at the token
//! endpoint (`login_failures`), so Ocean's token request and its webhook may land on different
//! replicas, and a guesser gains nothing by spreading tries over them.

use std::time::Duration;

use async_trait::async_trait;

use super::{PgStore, db_error};
use crate::store::error::StoreError;
use crate::store::replicas::{LoginFailures, ReplicaStore};

/// The setting holding the generated signing key.
pub(in crate::store) const SIGNING_KEY: &str = "oauth2_signing_key";

#[async_trait]
impl ReplicaStore for PgStore {
    async fn shared_signing_key(&self, candidate: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        // The first replica's key is kept; every later one reads it back.
        client
            .execute(
                "INSERT INTO relay_settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING",
                &[&SIGNING_KEY, &self.seal_setting(SIGNING_KEY, candidate)?],
            )
            .await
            .map_err(db_error("keeping the signing key"))?;
        let stored: Vec<u8> = client
            .query_one(
                "SELECT value FROM relay_settings WHERE name = $1",
                &[&SIGNING_KEY],
            )
            .await
            .map_err(db_error("reading the signing key"))?
            .get(0);
        self.open_setting(SIGNING_KEY, &stored).map(Some)
    }

    fn counts_login_failures(&self) -> bool {
        true
    }

    async fn login_failures(
        &self,
        buckets: &[String],
        window: Duration,
    ) -> Result<Vec<LoginFailures>, StoreError> {
        self.bounded("reading failed logins", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT bucket, failures,
                                    EXTRACT(EPOCH FROM since + make_interval(secs => $2) - now())::float8
                             FROM login_failures WHERE bucket = ANY($1)",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&buckets, &window.as_secs_f64()],
                )
                .await
                .map_err(db_error("reading failed logins"))?;
            Ok(buckets
                .iter()
                .map(|bucket| {
                    rows.iter()
                        .find(|row| row.get::<_, &str>(0) == bucket)
                        .map(|row| (row.get::<_, i32>(1), row.get::<_, f64>(2)))
                        .filter(|(_, left)| *left > 0.0)
                        .map_or(
                            LoginFailures {
                                failures: 0,
                                window_left_secs: 0,
                            },
                            |(failures, left)| LoginFailures {
                                failures: u32::try_from(failures).unwrap_or(0),
                                // Seconds, rounded up: a client told to wait 0 s would retry early.
                                window_left_secs: left.ceil().max(1.0) as u64,
                            },
                        )
                })
                .collect())
        })
        .await
    }

    async fn count_login_failure(
        &self,
        buckets: &[String],
        window: Duration,
    ) -> Result<(), StoreError> {
        self.bounded("counting a failed login", async {
            // Sorted, so two failures counted at once lock their rows in one order.
            let mut buckets = buckets.to_vec();
            buckets.sort();
            buckets.dedup();
            let window = window.as_secs_f64();
            let client = self.client().await?;
            client
                .execute(
                    &client
                        .prepare_cached(
                            "INSERT INTO login_failures AS f (bucket, failures, since)
                             SELECT b, 1, now() FROM unnest($1::text[]) AS b
                             ON CONFLICT (bucket) DO UPDATE SET
                               failures = CASE WHEN f.since <= now() - make_interval(secs => $2)
                                          THEN 1 ELSE f.failures + 1 END,
                               since = CASE WHEN f.since <= now() - make_interval(secs => $2)
                                       THEN now() ELSE f.since END",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&buckets, &window],
                )
                .await
                .map_err(db_error("counting a failed login"))?;
            // Buckets whose window passed are forgotten, so the table holds one window's worth.
            client
                .execute(
                    &client
                        .prepare_cached(
                            "DELETE FROM login_failures WHERE since < now() - make_interval(secs => $1)",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&window],
                )
                .await
                .map_err(db_error("forgetting old failed logins"))?;
            Ok(())
        })
        .await
    }

    async fn clear_login_failures(&self, bucket: &str) -> Result<(), StoreError> {
        self.bounded("clearing failed logins", async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM login_failures WHERE bucket = $1", &[&bucket])
                .await
                .map_err(db_error("clearing failed logins"))?;
            Ok(())
        })
        .await
    }
}
