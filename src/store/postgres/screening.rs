//! Screening counts on PostgreSQL (table `screening_tallies`, migration 7): each flush adds
//! its counts in one transaction, so replicas adding at once lose nothing.

use async_trait::async_trait;
use time::Date;

use super::{PgStore, db_error};
use crate::store::error::StoreError;
use crate::store::screening::{ScreeningStore, ScreeningTally};

#[async_trait]
impl ScreeningStore for PgStore {
    async fn add_screening_tallies(&self, tallies: &[ScreeningTally]) -> Result<(), StoreError> {
        if tallies.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let transaction = client
            .transaction()
            .await
            .map_err(db_error("begin adding screening counts"))?;
        for tally in tallies {
            let count = i64::try_from(tally.count).unwrap_or(i64::MAX);
            transaction
                .execute(
                    "INSERT INTO screening_tallies (day, service_id, rule, indicator, count)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (day, service_id, rule, indicator)
                     DO UPDATE SET count = screening_tallies.count + EXCLUDED.count",
                    &[
                        &tally.day,
                        &tally.service_id,
                        &tally.rule,
                        &tally.indicator,
                        &count,
                    ],
                )
                .await
                .map_err(db_error("add a screening count"))?;
        }
        transaction
            .commit()
            .await
            .map_err(db_error("commit screening counts"))
    }

    async fn screening_tallies(&self, since: Date) -> Result<Vec<ScreeningTally>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT day, service_id, rule, indicator, count FROM screening_tallies
                 WHERE day >= $1 ORDER BY day, service_id, rule, indicator",
                &[&since],
            )
            .await
            .map_err(db_error("read screening counts"))?;
        Ok(rows
            .iter()
            .map(|row| ScreeningTally {
                day: row.get(0),
                service_id: row.get(1),
                rule: row.get(2),
                indicator: row.get(3),
                count: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            })
            .collect())
    }
}
