//! Patients' completed eForms: each notification's record (by id), its dedup key, its place
//! among the pending ones, and what was fetched. Recording goes through the one writer, so
//! the dedup check and the insert cannot interleave with another notification's.

use async_trait::async_trait;
use bytes::Bytes;
use sled::Transactional;
use time::OffsetDateTime;

use super::handle::SledStore;
use super::open::Open;
use super::trees::{abort, tx_error, unavailable};
use super::writer::Target;
use crate::store::error::StoreError;
use crate::store::patient_forms::{
    NewPatientForm, PatientFormRecord, PatientFormState, PatientFormStore, Recorded,
};
use crate::store::record::{Codec, PATIENT_FORM_CONTENT, PATIENT_FORMS, read_u64};

/// `meta` key: the last id given to a patient form.
pub(in crate::store) const PATIENT_FORM_SEQ: &[u8] = b"patient_form_seq";

/// Writes `record` (and its content, when given) inside a transaction, keeping
/// `due_patient_forms` in step with its state; a purged record loses its content.
fn put(
    (forms, due, content): (
        &sled::transaction::TransactionalTree,
        &sled::transaction::TransactionalTree,
        &sled::transaction::TransactionalTree,
    ),
    codec: &Codec,
    record: &PatientFormRecord,
    sealed_content: Option<&[u8]>,
) -> Result<(), sled::transaction::ConflictableTransactionError<StoreError>> {
    let key = record.id.to_be_bytes();
    forms.insert(
        &key,
        codec.encode(PATIENT_FORMS, &key, record).map_err(abort)?,
    )?;
    if record.state == PatientFormState::Pending {
        due.insert(&key, &[])?;
    } else {
        due.remove(&key)?;
    }
    if record.purged {
        content.remove(&key)?;
    } else if let Some(sealed) = sealed_content {
        content.insert(&key, sealed)?;
    }
    Ok(())
}

impl Open {
    async fn record_patient_form(&self, new: &NewPatientForm) -> Result<Recorded, StoreError> {
        let new = new.clone();
        self.writer
            .write(
                move |Target {
                          trees: t, codec, ..
                      }| {
                    let dedup = new.dedup_key();
                    // The writer is the only one writing: nothing records between this read and
                    // the transaction.
                    if let Some(id) = t
                        .patient_form_dedup
                        .get(dedup.as_bytes())
                        .map_err(unavailable)?
                    {
                        return Ok(Recorded::Duplicate(read_u64(&id)?));
                    }
                    (
                        &t.meta,
                        &t.patient_form_dedup,
                        &t.patient_forms,
                        &t.due_patient_forms,
                        &t.patient_form_content,
                    )
                        .transaction(|(meta, dedup_tree, forms, due, content)| {
                            let last = meta
                                .get(PATIENT_FORM_SEQ)?
                                .map(|v| read_u64(&v))
                                .transpose()
                                .map_err(abort)?
                                .unwrap_or_default();
                            let id = last + 1;
                            meta.insert(PATIENT_FORM_SEQ, &id.to_be_bytes())?;
                            dedup_tree.insert(dedup.as_bytes(), &id.to_be_bytes())?;
                            let record = new.record(id);
                            put((forms, due, content), codec, &record, None)?;
                            Ok(Recorded::New(Box::new(record)))
                        })
                        .map_err(tx_error)
                },
            )
            .await
    }

    fn record_at(&self, key: &[u8]) -> Result<Option<PatientFormRecord>, StoreError> {
        self.trees
            .patient_forms
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(PATIENT_FORMS, key, &v))
            .transpose()
    }

    /// Blocking: the pending ones due at `now` (few at any time: read whole).
    fn due_patient_forms(
        &self,
        now: OffsetDateTime,
        limit: usize,
        busy: &[u64],
    ) -> Result<Vec<PatientFormRecord>, StoreError> {
        let mut due = Vec::new();
        for item in &self.trees.due_patient_forms {
            let (key, _) = item.map_err(unavailable)?;
            let Some(record) = self.record_at(&key)? else {
                continue;
            };
            if record.state == PatientFormState::Pending
                && record.next_attempt_at <= now
                && !busy.contains(&record.id)
            {
                due.push(record);
            }
        }
        due.sort_by_key(|r| (r.next_attempt_at, r.id));
        due.truncate(limit);
        Ok(due)
    }

    async fn save_patient_form(
        &self,
        record: &PatientFormRecord,
        content: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let key = record.id.to_be_bytes();
        let sealed = content
            .map(|c| self.codec.seal(PATIENT_FORM_CONTENT, &key, &c))
            .transpose()?;
        let record = record.clone();
        self.writer
            .write(
                move |Target {
                          trees: t, codec, ..
                      }| {
                    (
                        &t.patient_forms,
                        &t.due_patient_forms,
                        &t.patient_form_content,
                    )
                        .transaction(|(forms, due, stored)| {
                            put((forms, due, stored), codec, &record, sealed.as_deref())
                        })
                        .map_err(tx_error)
                },
            )
            .await
    }

    fn patient_forms(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PatientFormRecord>, StoreError> {
        self.trees
            .patient_forms
            .range(after.saturating_add(1).to_be_bytes()..)
            .take(limit)
            .map(|item| {
                let (key, value) = item.map_err(unavailable)?;
                self.codec.decode(PATIENT_FORMS, &key, &value)
            })
            .collect()
    }

    fn patient_form_content(&self, id: u64) -> Result<Option<Bytes>, StoreError> {
        let key = id.to_be_bytes();
        self.trees
            .patient_form_content
            .get(key)
            .map_err(unavailable)?
            .map(|v| {
                self.codec
                    .open(PATIENT_FORM_CONTENT, &key, &v)
                    .map(|b| Bytes::from(b.into_owned()))
            })
            .transpose()
    }

    /// Blocking: the records received before `cutoff` and not purged yet, purged.
    fn to_purge(&self, cutoff: OffsetDateTime) -> Result<Vec<PatientFormRecord>, StoreError> {
        let mut purged = Vec::new();
        for item in &self.trees.patient_forms {
            let (key, value) = item.map_err(unavailable)?;
            let mut record: PatientFormRecord = self.codec.decode(PATIENT_FORMS, &key, &value)?;
            if !record.purged && record.received_at < cutoff {
                record.purge();
                purged.push(record);
            }
        }
        Ok(purged)
    }
}

#[async_trait]
impl PatientFormStore for SledStore {
    async fn record_patient_form(&self, new: &NewPatientForm) -> Result<Recorded, StoreError> {
        let open = self.open_db()?;
        self.checked(open.record_patient_form(new).await)
    }

    async fn due_patient_forms(
        &self,
        now: OffsetDateTime,
        _lease: std::time::Duration,
        limit: usize,
        busy: &[u64],
    ) -> Result<Vec<PatientFormRecord>, StoreError> {
        // One process owns the embedded store: nothing to lease against.
        let busy = busy.to_vec();
        self.off_worker(move |open| open.due_patient_forms(now, limit, &busy))
            .await
    }

    async fn save_patient_form(
        &self,
        record: &PatientFormRecord,
        content: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.save_patient_form(record, content).await)
    }

    async fn patient_forms(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PatientFormRecord>, StoreError> {
        self.off_worker(move |open| open.patient_forms(after, limit))
            .await
    }

    async fn patient_form(&self, id: u64) -> Result<Option<PatientFormRecord>, StoreError> {
        self.off_worker(move |open| open.record_at(&id.to_be_bytes()))
            .await
    }

    async fn patient_form_content(&self, id: u64) -> Result<Option<Bytes>, StoreError> {
        self.off_worker(move |open| open.patient_form_content(id))
            .await
    }

    async fn purge_patient_forms_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let open = self.open_db()?;
        let purged = self
            .off_worker_on(&open, move |open| open.to_purge(cutoff))
            .await?;
        let count = purged.len() as u64;
        for record in purged {
            self.checked(open.save_patient_form(&record, None).await)?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(session: &str) -> NewPatientForm {
        NewPatientForm {
            endpoint: "clinic".into(),
            kind: "notify-patient-message-forms-completion".into(),
            patient_ref: "690".into(),
            session_id: Some(session.into()),
            completion_source: None,
            site_num: "1234".into(),
            received_at: OffsetDateTime::now_utc() - time::Duration::seconds(5),
        }
    }

    /// Recorded once per notification, ids increasing, due until saved otherwise, content kept
    /// until purged; all of it still there after the store is reopened.
    #[tokio::test]
    async fn notifications_are_recorded_once_and_fetched_state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let Recorded::New(first) = store.record_patient_form(&new("s1")).await.unwrap() else {
                panic!("not new");
            };
            assert_eq!(first.id, 1);
            assert_eq!(
                store.record_patient_form(&new("s1")).await.unwrap(),
                Recorded::Duplicate(1)
            );
            let Recorded::New(second) = store.record_patient_form(&new("s2")).await.unwrap() else {
                panic!("not new");
            };
            assert_eq!(second.id, 2);
            let due = store
                .due_patient_forms(now, std::time::Duration::ZERO, 10, &[2])
                .await
                .unwrap();
            assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
            let mut fetched = first.clone();
            fetched.state = PatientFormState::Fetched;
            store
                .save_patient_form(&fetched, Some(Bytes::from_static(b"{\"x\":1}")))
                .await
                .unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let due = store
            .due_patient_forms(now, std::time::Duration::ZERO, 10, &[])
            .await
            .unwrap();
        assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
        assert_eq!(
            store
                .patient_form_content(1)
                .await
                .unwrap()
                .unwrap()
                .as_ref(),
            b"{\"x\":1}"
        );
        assert_eq!(store.patient_forms(1, 10).await.unwrap().len(), 1);
        assert_eq!(
            store.record_patient_form(&new("s2")).await.unwrap(),
            Recorded::Duplicate(2)
        );
        assert_eq!(store.purge_patient_forms_before(now).await.unwrap(), 2);
        assert!(store.patient_form_content(1).await.unwrap().is_none());
        assert!(store.patient_form(1).await.unwrap().unwrap().purged);
        assert_eq!(store.purge_patient_forms_before(now).await.unwrap(), 0);
        assert!(
            store
                .due_patient_forms(now, std::time::Duration::ZERO, 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
    }
}
