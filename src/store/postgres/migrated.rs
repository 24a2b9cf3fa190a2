//! What a `referral-relay migrate` into this database leaves for the replicas: they refuse to
//! start until it has finished, and settle what it copied sealed (see [`crate::store::copy`]).

use super::outbox::state_name;
use super::records::PLAIN_SETTING;
use super::replicas::SIGNING_KEY;
use super::{PgStore, db_error};
use crate::store::error::StoreError;

/// The state column of an update copied sealed, until a replica with the key reads its state.
pub(in crate::store) const MIGRATED: &str = "migrated";
/// Present from the start of a copy until its counts match: replicas refuse to start meanwhile.
pub(in crate::store) const MIGRATION_UNFINISHED: &str = "migration_unfinished";

/// Refuses to serve from a database a `migrate` is filling, or left unfinished: its feed,
/// dedup keys and id sequences are not whole yet, so a delivery stored now could be stored
/// twice or break the audit chain.
///
/// # Errors
/// `Failed`, saying to finish the migration.
pub(super) async fn refuse_unfinished(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    let unfinished = client
        .query_opt(
            "SELECT 1 FROM relay_settings WHERE name = $1",
            &[&MIGRATION_UNFINISHED],
        )
        .await
        .map_err(db_error("looking for an unfinished migration"))?
        .is_some();
    if unfinished {
        return Err(StoreError::failed(
            "a `referral-relay migrate` into this database has not finished (interrupted, or still running): run it again with the same data dir until it reports matching counts, then start the service",
        ));
    }
    Ok(())
}

/// Finishes what `migrate` left for a replica with the key, at every start: each update copied
/// sealed ([`MIGRATED`]) gets its state column from its record (a patient form its state,
/// due and received times), and a signing key copied
/// unsealed is sealed, when a key is configured.
pub(super) async fn settle_migration(store: &PgStore) -> Result<(), StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, record FROM updates WHERE state = $1",
            &[&MIGRATED],
        )
        .await
        .map_err(db_error("reading migrated updates"))?;
    for row in &rows {
        let id: i64 = row.get(0);
        let update = store.open_update(u64::try_from(id).unwrap_or_default(), row.get(1))?;
        client
            .execute(
                "UPDATE updates SET state = $2 WHERE id = $1 AND state = $3",
                &[&id, &state_name(update.state), &MIGRATED],
            )
            .await
            .map_err(db_error("settling a migrated update"))?;
    }
    let rows = client
        .query(
            "SELECT id, queue, referral, version, record FROM queue WHERE state = $1",
            &[&MIGRATED],
        )
        .await
        .map_err(db_error("reading migrated updates"))?;
    for row in &rows {
        let message = store.open_message(row)?;
        client
            .execute(
                "UPDATE queue SET state = $2, referral = $3, next_attempt_at = $4, created_at = $5,
                     delivered_at = $6
                 WHERE id = $1 AND state = $7",
                &[
                    &row.get::<_, i64>("id"),
                    &state_name(message.state),
                    &message.referral.as_str(),
                    &message.next_attempt_at,
                    &message.created_at,
                    &message.delivered_at,
                    &MIGRATED,
                ],
            )
            .await
            .map_err(db_error("settling a migrated update"))?;
    }
    // Patients' completed eForms: their columns come from their records.
    let rows = client
        .query(
            "SELECT id, record FROM patient_forms WHERE state = $1",
            &[&MIGRATED],
        )
        .await
        .map_err(db_error("reading migrated patient forms"))?;
    for row in &rows {
        let form = store.open_patient_form(row.get(0), row.get(1))?;
        client
            .execute(
                "UPDATE patient_forms SET state = $2, next_attempt_at = $3, received_at = $4,
                     purged = $5
                 WHERE id = $1 AND state = $6",
                &[
                    &row.get::<_, i64>(0),
                    &form.state.as_str(),
                    &form.next_attempt_at,
                    &form.received_at,
                    &form.purged,
                    &MIGRATED,
                ],
            )
            .await
            .map_err(db_error("settling a migrated patient form"))?;
    }
    if store.codec.0.is_some()
        && let Some(row) = client
            .query_opt(
                "SELECT value FROM relay_settings WHERE name = $1",
                &[&SIGNING_KEY],
            )
            .await
            .map_err(db_error("reading the signing key"))?
    {
        let stored: Vec<u8> = row.get(0);
        if stored.first() == Some(&PLAIN_SETTING) {
            let key = store.open_setting(SIGNING_KEY, &stored)?;
            client
                .execute(
                    "UPDATE relay_settings SET value = $2 WHERE name = $1 AND value = $3",
                    &[
                        &SIGNING_KEY,
                        &store.seal_setting(SIGNING_KEY, &key)?,
                        &stored,
                    ],
                )
                .await
                .map_err(db_error("sealing the signing key"))?;
        }
    }
    Ok(())
}
