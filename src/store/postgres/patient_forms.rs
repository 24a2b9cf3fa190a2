//! Patients' completed eForms on PostgreSQL (table `patient_forms`, migration 5). Recording
//! locks the table for the length of its short transaction: the dedup check and the next id
//! cannot interleave with another replica's, and ids commit in order, so a reader of the feed
//! (`id > after`) never passes one that commits later. Claims lease due rows as documents do.

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;

use super::deliveries::{to_i64, to_u64};
use super::{PgStore, db_error};
use crate::store::error::StoreError;
use crate::store::patient_forms::{NewPatientForm, PatientFormRecord, PatientFormStore, Recorded};
use crate::store::record::{PATIENT_FORM_CONTENT, PATIENT_FORMS};

const CLAIM: &str = "UPDATE patient_forms SET next_attempt_at = $2
     WHERE id IN (
         SELECT id FROM patient_forms
         WHERE state = 'pending' AND next_attempt_at <= $1
         ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
     RETURNING id, record";

const SAVE: &str = "UPDATE patient_forms
     SET state = $2, next_attempt_at = $3, purged = $4, record = $5,
         content = CASE WHEN $4 THEN NULL ELSE coalesce($6, content) END
     WHERE id = $1";

impl PgStore {
    fn seal_patient_form(&self, record: &PatientFormRecord) -> Result<Vec<u8>, StoreError> {
        self.codec
            .encode(PATIENT_FORMS, &record.id.to_be_bytes(), record)
    }

    pub(super) fn open_patient_form(
        &self,
        id: i64,
        stored: &[u8],
    ) -> Result<PatientFormRecord, StoreError> {
        self.codec
            .decode(PATIENT_FORMS, &to_u64(id).to_be_bytes(), stored)
    }

    async fn save_patient_form_row(
        &self,
        record: &PatientFormRecord,
        content: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let sealed = self.seal_patient_form(record)?;
        let sealed_content = content
            .map(|c| {
                self.codec
                    .seal(PATIENT_FORM_CONTENT, &record.id.to_be_bytes(), &c)
            })
            .transpose()?;
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(SAVE)
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[
                    &to_i64(record.id),
                    &record.state.as_str(),
                    &record.next_attempt_at,
                    &record.purged,
                    &sealed,
                    &sealed_content,
                ],
            )
            .await
            .map_err(db_error("saving a patient form"))?;
        Ok(())
    }
}

#[async_trait]
impl PatientFormStore for PgStore {
    async fn record_patient_form(&self, new: &NewPatientForm) -> Result<Recorded, StoreError> {
        let dedup = new.dedup_key();
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("starting to record a patient form"))?;
        tx.batch_execute("LOCK TABLE patient_forms IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(db_error("locking patient_forms"))?;
        if let Some(row) = tx
            .query_opt("SELECT id FROM patient_forms WHERE dedup = $1", &[&dedup])
            .await
            .map_err(db_error("looking for a patient form"))?
        {
            tx.commit()
                .await
                .map_err(db_error("ending a look for a patient form"))?;
            return Ok(Recorded::Duplicate(to_u64(row.get(0))));
        }
        let next: i64 = tx
            .query_one("SELECT coalesce(max(id), 0) + 1 FROM patient_forms", &[])
            .await
            .map_err(db_error("numbering a patient form"))?
            .get(0);
        let record = new.record(to_u64(next));
        let sealed = self.seal_patient_form(&record)?;
        tx.execute(
            "INSERT INTO patient_forms (id, dedup, state, next_attempt_at, received_at, record)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &next,
                &dedup,
                &record.state.as_str(),
                &record.next_attempt_at,
                &record.received_at,
                &sealed,
            ],
        )
        .await
        .map_err(db_error("recording a patient form"))?;
        tx.commit()
            .await
            .map_err(db_error("committing a patient form"))?;
        Ok(Recorded::New(Box::new(record)))
    }

    async fn due_patient_forms(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
        _busy: &[u64],
    ) -> Result<Vec<PatientFormRecord>, StoreError> {
        // What this replica is fetching is leased, so not due: nothing to leave out.
        let client = self.client().await?;
        let until = now + lease;
        let rows = client
            .query(
                &client
                    .prepare_cached(CLAIM)
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&now, &until, &to_i64(limit as u64)],
            )
            .await
            .map_err(db_error("claiming due patient forms"))?;
        let mut due = rows
            .iter()
            .map(|row| self.open_patient_form(row.get(0), row.get::<_, &[u8]>(1)))
            .collect::<Result<Vec<_>, _>>()?;
        due.sort_by_key(|r| (r.next_attempt_at, r.id));
        Ok(due)
    }

    async fn save_patient_form(
        &self,
        record: &PatientFormRecord,
        content: Option<Bytes>,
    ) -> Result<(), StoreError> {
        self.save_patient_form_row(record, content).await
    }

    async fn patient_forms(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PatientFormRecord>, StoreError> {
        self.bounded("reading patient forms", async {
            let client = self.client().await?;
            client
                .query(
                    "SELECT id, record FROM patient_forms WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&to_i64(after), &to_i64(limit as u64)],
                )
                .await
                .map_err(db_error("reading patient forms"))?
                .iter()
                .map(|row| self.open_patient_form(row.get(0), row.get::<_, &[u8]>(1)))
                .collect()
        })
        .await
    }

    async fn patient_form(&self, id: u64) -> Result<Option<PatientFormRecord>, StoreError> {
        self.bounded("reading a patient form", async {
            let client = self.client().await?;
            client
                .query_opt(
                    "SELECT id, record FROM patient_forms WHERE id = $1",
                    &[&to_i64(id)],
                )
                .await
                .map_err(db_error("reading a patient form"))?
                .map(|row| self.open_patient_form(row.get(0), row.get::<_, &[u8]>(1)))
                .transpose()
        })
        .await
    }

    async fn patient_form_content(&self, id: u64) -> Result<Option<Bytes>, StoreError> {
        self.bounded("reading a patient form", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT content FROM patient_forms WHERE id = $1",
                    &[&to_i64(id)],
                )
                .await
                .map_err(db_error("reading a patient form"))?;
            row.and_then(|row| row.get::<_, Option<Vec<u8>>>(0))
                .map(|stored| {
                    self.codec
                        .open(PATIENT_FORM_CONTENT, &id.to_be_bytes(), &stored)
                        .map(|b| Bytes::from(b.into_owned()))
                })
                .transpose()
        })
        .await
    }

    async fn purge_patient_forms_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let rows = {
            let client = self.client().await?;
            client
                .query(
                    "SELECT id, record FROM patient_forms WHERE NOT purged AND received_at < $1",
                    &[&cutoff],
                )
                .await
                .map_err(db_error("reading patient forms to purge"))?
        };
        let mut purged = 0;
        for row in &rows {
            let mut record = self.open_patient_form(row.get(0), row.get::<_, &[u8]>(1))?;
            record.purge();
            self.save_patient_form_row(&record, None).await?;
            purged += 1;
        }
        Ok(purged)
    }
}
