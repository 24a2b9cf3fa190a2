//! The marks a copy leaves in `relay_settings`: which data dir the database is filled from
//! (so a re-run finishes only its own copy), and the settings that travel with the data (the
//! sealing keys' ids, the token signing key).

use std::path::Path;

use super::{Copier, sled_error};
use crate::store::error::StoreError;
use crate::store::postgres::for_copy as pg;
use crate::store::sled::for_copy::{AUDIT_HEAD, EVENT_SEQ, QUEUE_SEQ, SEAL_KEYS, Trees};

/// The setting naming the data dir a database was filled from.
const MIGRATED_FROM: &str = "migrated_from";
/// The file in a data dir holding the generated token signing key.
const KEY_FILE: &str = crate::auth::token::KEY_FILE;

/// Marks the database as filled from `data_dir`, or refuses one that already holds referrals
/// from elsewhere (a re-run after an interruption finds its own mark).
pub(super) async fn claim(
    copy: &mut Copier<'_>,
    t: &Trees,
    data_dir: &Path,
) -> Result<(), StoreError> {
    let from = std::fs::canonicalize(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .display()
        .to_string();
    // What the data dir holds: where the feed, the outbox and the audit chain end. A re-run
    // finishes a copy only of the same data dir, unchanged since.
    let counter = |key: &[u8]| -> Result<String, StoreError> {
        Ok(t.meta
            .get(key)
            .map_err(sled_error)?
            .map(hex::encode)
            .unwrap_or_default())
    };
    let fingerprint = format!(
        "{from}\nfeed {}\nqueue {}\naudit {}",
        counter(EVENT_SEQ)?,
        counter(QUEUE_SEQ)?,
        counter(AUDIT_HEAD)?
    );
    let tx = copy
        .client
        .transaction()
        .await
        .map_err(pg::db_error("starting the copy"))?;
    let mark: Option<Vec<u8>> = tx
        .query_opt(
            "SELECT value FROM relay_settings WHERE name = $1 FOR UPDATE",
            &[&MIGRATED_FROM],
        )
        .await
        .map_err(pg::db_error("reading the migration mark"))?
        .map(|row| row.get(0));
    let holds: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM referrals) OR EXISTS (SELECT 1 FROM events)
                 OR EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM queue)
                 OR EXISTS (SELECT 1 FROM deliveries) OR EXISTS (SELECT 1 FROM task_states)",
            &[],
        )
        .await
        .map_err(pg::db_error("looking for rows"))?
        .get(0);
    match mark {
        Some(mark) if mark == fingerprint.as_bytes() => {}
        Some(mark) if !mark.starts_with(format!("{from}\n").as_bytes()) => {
            let other = String::from_utf8_lossy(&mark);
            return Err(StoreError::failed(format!(
                "this database was filled from another data dir ({}); migrate into an empty database or schema",
                other.lines().next().unwrap_or_default()
            )));
        }
        Some(_) => {
            return Err(StoreError::failed(
                "the data dir changed since the copy into this database began (the service ran on it): drop the schema and migrate again",
            ));
        }
        None if holds => {
            return Err(StoreError::failed(
                "this database already holds rows (a replica ran on it?); migrate into an empty database or schema, with every replica stopped",
            ));
        }
        None => {
            tx.execute(
                "INSERT INTO relay_settings (name, value) VALUES ($1, $2), ($3, ''::bytea)",
                &[
                    &MIGRATED_FROM,
                    &fingerprint.as_bytes(),
                    &pg::MIGRATION_UNFINISHED,
                ],
            )
            .await
            .map_err(pg::db_error("marking the migration"))?;
        }
    }
    tx.commit()
        .await
        .map_err(pg::db_error("committing the migration mark"))
}

/// The ids of the keys that sealed records (merged with any already listed), and the generated
/// token signing key, so tokens issued before the move stay valid.
pub(super) async fn settings(
    copy: &mut Copier<'_>,
    t: &Trees,
    data_dir: &Path,
) -> Result<(), StoreError> {
    let tx = copy
        .client
        .transaction()
        .await
        .map_err(pg::db_error("starting the settings copy"))?;
    if let Some(ids) = t.meta.get(SEAL_KEYS).map_err(sled_error)? {
        tx.execute(
            "INSERT INTO relay_settings (name, value) VALUES ($1, ''::bytea) ON CONFLICT (name) DO NOTHING",
            &[&pg::SEAL_KEY_IDS],
        )
        .await
        .map_err(pg::db_error("listing the sealing keys"))?;
        let listed: Vec<u8> = tx
            .query_one(
                "SELECT value FROM relay_settings WHERE name = $1 FOR UPDATE",
                &[&pg::SEAL_KEY_IDS],
            )
            .await
            .map_err(pg::db_error("reading the sealing keys"))?
            .get(0);
        let mut merged: Vec<&[u8]> = listed.chunks_exact(8).collect();
        for id in ids.chunks_exact(8) {
            if !merged.contains(&id) {
                merged.push(id);
            }
        }
        tx.execute(
            "UPDATE relay_settings SET value = $2 WHERE name = $1",
            &[&pg::SEAL_KEY_IDS, &merged.concat()],
        )
        .await
        .map_err(pg::db_error("listing the sealing keys"))?;
    }
    let key_file = data_dir.join(KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&key_file) {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                StoreError::failed(format!("{} is not valid base64", key_file.display()))
            })?;
        tx.execute(
            "INSERT INTO relay_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&pg::SIGNING_KEY, &pg::plain_setting(&key)],
        )
        .await
        .map_err(pg::db_error("copying the signing key"))?;
    }
    tx.commit()
        .await
        .map_err(pg::db_error("committing the settings copy"))
}
