//! Console sessions in the embedded store: `console_sessions` (id digest → session) and
//! `console_visits` (account → when it last looked at the list, µs). Writes go through the one
//! writer, so a touch cannot bring back a session a sign-out removed.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::handle::SledStore;
use super::trees::unavailable;
use super::writer::Target;
use crate::store::console::{ConsoleCutoffs, ConsoleSessionRecord, ConsoleStore};
use crate::store::error::StoreError;
use crate::store::record::{decode, encode, from_micros, micros, read_u64};

impl SledStore {
    /// Runs `write` on the writer, as [`SledStore::checked`].
    async fn console_write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Target) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let open = self.open_db()?;
        self.checked(open.writer.write(write).await)
    }
}

/// The session stored under `key` in `tree`, if any.
fn read_session(tree: &sled::Tree, key: &[u8]) -> Result<Option<ConsoleSessionRecord>, StoreError> {
    tree.get(key)
        .map_err(unavailable)?
        .map(|v| decode(&v))
        .transpose()
}

#[async_trait]
impl ConsoleStore for SledStore {
    async fn save_console_session(&self, record: &ConsoleSessionRecord) -> Result<(), StoreError> {
        let value = encode(record)?;
        let key = record.id_digest.clone();
        self.console_write(move |t| {
            t.trees
                .console_sessions
                .insert(key.as_bytes(), value)
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn console_session(
        &self,
        id_digest: &str,
    ) -> Result<Option<ConsoleSessionRecord>, StoreError> {
        let key = id_digest.to_owned();
        self.off_worker(move |open| read_session(&open.trees.console_sessions, key.as_bytes()))
            .await
    }

    async fn touch_console_session(
        &self,
        id_digest: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let key = id_digest.to_owned();
        self.console_write(move |t| {
            let tree = &t.trees.console_sessions;
            // The writer is the only one writing: an end cannot slip in between.
            if let Some(mut record) = read_session(tree, key.as_bytes())? {
                record.last_used_at = at;
                tree.insert(key.as_bytes(), encode(&record)?)
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn end_console_session(
        &self,
        id_digest: &str,
    ) -> Result<Option<ConsoleSessionRecord>, StoreError> {
        let key = id_digest.to_owned();
        self.console_write(move |t| {
            t.trees
                .console_sessions
                .remove(key.as_bytes())
                .map_err(unavailable)?
                .map(|v| decode(&v))
                .transpose()
        })
        .await
    }

    async fn end_console_sessions_of(&self, account: &str) -> Result<u64, StoreError> {
        let account = account.to_owned();
        self.console_write(move |t| {
            let tree = &t.trees.console_sessions;
            let mut ended = 0;
            for item in tree {
                let (key, value) = item.map_err(unavailable)?;
                let record: ConsoleSessionRecord = decode(&value)?;
                if record.account == account {
                    tree.remove(key).map_err(unavailable)?;
                    ended += 1;
                }
            }
            Ok(ended)
        })
        .await
    }

    async fn console_sessions(&self) -> Result<Vec<ConsoleSessionRecord>, StoreError> {
        let mut sessions = self
            .off_worker(|open| {
                open.trees
                    .console_sessions
                    .iter()
                    .map(|item| decode(&item.map_err(unavailable)?.1))
                    .collect::<Result<Vec<ConsoleSessionRecord>, _>>()
            })
            .await?;
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    async fn console_visit(&self, account: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let key = account.to_owned();
        self.off_worker(move |open| {
            open.trees
                .console_visits
                .get(key.as_bytes())
                .map_err(unavailable)?
                .map(|v| read_u64(&v).map(from_micros))
                .transpose()
        })
        .await
    }

    async fn save_console_visit(
        &self,
        account: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let key = account.to_owned();
        self.console_write(move |t| {
            t.trees
                .console_visits
                .insert(key.as_bytes(), &micros(at).to_be_bytes())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn purge_console(&self, cutoffs: ConsoleCutoffs) -> Result<u64, StoreError> {
        self.console_write(move |t| {
            let mut removed = 0;
            for item in &t.trees.console_sessions {
                let (key, value) = item.map_err(unavailable)?;
                let record: ConsoleSessionRecord = decode(&value)?;
                if record.expired(&cutoffs) {
                    t.trees.console_sessions.remove(key).map_err(unavailable)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }
}
