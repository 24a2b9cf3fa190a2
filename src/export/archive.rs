//! `export --with-documents`: the CSV export and each exported referral's documents in one ZIP
//! archive (PKWARE APPNOTE 6.3, as the `zip` crate writes it): `referrals.csv`, then
//! `{referral}/{file}` for the referral's latest letter and the latest copy of each attachment
//! that was fetched and not purged, then `patient-forms/{id}.json` for each patient's completed
//! eForms kept. The archive is finished before the export is audited and
//! marked, so a run cut off part way marks nothing.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::CsvSink;
use crate::domain::ReferralRef;
use crate::store::{
    DocumentKind, DocumentRecord, DocumentState, PatientFormState, Store, sha256_hex,
};

/// The archive being written.
pub struct ArchiveSink<'s> {
    zip: Option<ZipWriter<BufWriter<File>>>,
    store: &'s dyn Store,
    /// The referrals written to the CSV, in order (filled by the export's `visible`).
    rows: Arc<Mutex<Vec<ReferralRef>>>,
    /// Documents added so far.
    pub documents: usize,
    /// Patients' completed eForms added (at the end, `patient-forms/{id}.json`).
    pub patient_forms: usize,
    /// Folder names used so far, lowercased (archives are unpacked on case-insensitive disks).
    folders: std::collections::HashSet<String>,
}

impl<'s> ArchiveSink<'s> {
    /// Starts the archive in `file` with the `referrals.csv` entry open; `rows` is to be filled
    /// with each referral the export writes.
    ///
    /// # Errors
    /// The entry cannot be started (the file cannot be written).
    pub fn new(
        file: File,
        store: &'s dyn Store,
        rows: Arc<Mutex<Vec<ReferralRef>>>,
    ) -> io::Result<Self> {
        let mut zip = ZipWriter::new(BufWriter::new(file));
        zip.start_file("referrals.csv", options(CompressionMethod::Deflated))
            .map_err(io::Error::other)?;
        Ok(Self {
            zip: Some(zip),
            store,
            rows,
            documents: 0,
            patient_forms: 0,
            folders: std::collections::HashSet::new(),
        })
    }

    fn zip(&mut self) -> io::Result<&mut ZipWriter<BufWriter<File>>> {
        self.zip
            .as_mut()
            .ok_or_else(|| io::Error::other("the archive is already finished"))
    }
}

fn options(method: CompressionMethod) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true)
}

/// The documents of a referral an archive holds: the latest fetched letter, and the latest
/// fetched copy of each attachment (by its DocumentReference id, else its url).
pub fn latest_documents(documents: Vec<DocumentRecord>) -> Vec<DocumentRecord> {
    let mut kept: Vec<DocumentRecord> = Vec::new();
    let kept_ones = documents
        .into_iter()
        .filter(|d| d.state == DocumentState::Fetched && !d.purged);
    for document in kept_ones {
        let same = |other: &DocumentRecord| match document.kind {
            DocumentKind::Letter => other.kind == DocumentKind::Letter,
            DocumentKind::Attachment => {
                other.kind == DocumentKind::Attachment
                    && other.document_id.as_ref().or(other.source.as_ref())
                        == document.document_id.as_ref().or(document.source.as_ref())
            }
        };
        match kept.iter_mut().find(|k| same(k)) {
            Some(earlier) if earlier.version < document.version => *earlier = document,
            Some(_) => {}
            None => kept.push(document),
        }
    }
    kept
}

#[async_trait]
impl CsvSink for ArchiveSink<'_> {
    async fn write(&mut self, chunk: Vec<u8>, _rows: usize) -> io::Result<()> {
        self.zip()?.write_all(&chunk)
    }

    async fn finish(&mut self, _rows: usize) -> io::Result<()> {
        let referrals =
            std::mem::take(&mut *self.rows.lock().map_err(|_| io::Error::other("poisoned"))?);
        for referral in referrals {
            let documents = self
                .store
                .documents(&referral)
                .await
                .map_err(io::Error::other)?;
            let documents = latest_documents(documents);
            if documents.is_empty() {
                continue;
            }
            // A folder name already taken (another ref that reads alike) gets the ref's whole
            // SHA-256, then a counter.
            let mut name = folder(&referral);
            if self.folders.contains(&name.to_lowercase()) {
                name = format!(
                    "{}-{}",
                    referral.file_stem(),
                    sha256_hex(referral.as_str().as_bytes())
                );
            }
            let base = name.clone();
            let mut n = 1;
            while self.folders.contains(&name.to_lowercase()) {
                n += 1;
                name = format!("{base}-{n}");
            }
            self.folders.insert(name.to_lowercase());
            for document in documents {
                let Some(bytes) = self
                    .store
                    .document_bytes(&referral, document.version, document.index)
                    .await
                    .map_err(io::Error::other)?
                else {
                    continue;
                };
                let entry = format!("{name}/{}", document.file_name());
                // PDFs are compressed already.
                let zip = self.zip()?;
                zip.start_file(entry, options(CompressionMethod::Stored))
                    .map_err(io::Error::other)?;
                zip.write_all(&bytes)?;
                self.documents += 1;
            }
        }
        self.add_patient_forms().await?;
        let zip = self
            .zip
            .take()
            .ok_or_else(|| io::Error::other("the archive is already finished"))?;
        let mut out = zip.finish().map_err(io::Error::other)?;
        out.flush()?;
        out.get_ref().sync_all()
    }
}

impl ArchiveSink<'_> {
    /// Every patient's completed eForms that is fetched and not purged, as
    /// `patient-forms/{id}.json` ([`crate::patient_engagement::submission`]): all of them, not
    /// only the export's range (they have no modification date or export mark; the archive is
    /// the clinic's backup of them too). Names are ids: nothing of the patient in a name.
    async fn add_patient_forms(&mut self) -> io::Result<()> {
        let mut after = 0;
        loop {
            let page = self
                .store
                .patient_forms(after, 500)
                .await
                .map_err(io::Error::other)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.id;
            for record in page {
                if record.state != PatientFormState::Fetched || record.purged {
                    continue;
                }
                let Some(bytes) = self
                    .store
                    .patient_form_content(record.id)
                    .await
                    .map_err(io::Error::other)?
                else {
                    continue;
                };
                let content: crate::patient_engagement::Content =
                    serde_json::from_slice(&bytes).map_err(io::Error::other)?;
                let json = serde_json::to_vec_pretty(&crate::patient_engagement::submission(
                    &record, &content,
                ))
                .map_err(io::Error::other)?;
                let zip = self.zip()?;
                zip.start_file(
                    format!("patient-forms/{}.json", record.id),
                    options(CompressionMethod::Deflated),
                )
                .map_err(io::Error::other)?;
                zip.write_all(&json)?;
                self.patient_forms += 1;
            }
        }
    }
}

/// A referral ref as a folder name: its [`file_stem`](ReferralRef::file_stem).
fn folder(referral: &ReferralRef) -> String {
    referral.file_stem()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_stay_inside_the_archive() {
        let r = |s: &str| ReferralRef::parse(s).unwrap();
        assert_eq!(folder(&r("TST-0011-AAAA")), "TST-0011-AAAA");
        for (referral, safe) in [
            ("../etc/x", "_etc_x-"),
            ("..", "-"),
            ("a b/c", "a_b_c-"),
            ("CON", "CON-"),
        ] {
            let name = folder(&r(referral));
            assert!(
                name.starts_with(safe) && name.len() == safe.len() + 12,
                "{name}"
            );
        }
        // Refs that read alike once made safe keep folders of their own.
        assert_ne!(folder(&r("a b")), folder(&r("a\u{202e}b")));
    }
}
