//! The CSV backup export, one pipeline for the command line and the API: referrals read from
//! the store in batches by modification time, filtered, written as CSV rows into a
//! [`CsvSink`], then audited and (when asked) marked exported, only once the sink has taken
//! the whole file. An export cut off part way marks nothing.

pub mod archive;
mod csv;
mod html;

use std::io::{self, Write};

use async_trait::async_trait;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use self::csv::timestamp;
pub use self::csv::{BOM, COLUMNS, write_header, write_row};
use crate::domain::{ReferralRef, ServiceId};
use crate::store::{ReferralRecord, Store, StoreError};

/// Bytes gathered before they are handed to the sink.
const CHUNK: usize = 64 * 1024;
/// Referrals read from the store at a time.
const BATCH: usize = 500;

/// Which referrals an export holds.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Modified at or after.
    pub from: Option<OffsetDateTime>,
    /// Modified at or before.
    pub to: Option<OffsetDateTime>,
    pub service: Option<ServiceId>,
    /// Only referrals never exported, or modified since their last export.
    pub unexported_only: bool,
}

impl ExportFilter {
    /// Whether `r` belongs in the export (the date range is applied by the store scan).
    pub fn keeps(&self, r: &ReferralRecord) -> bool {
        self.service
            .as_ref()
            .is_none_or(|s| r.service_id.as_ref() == Some(s))
            && (!self.unexported_only || r.exported_at.is_none_or(|at| r.modified_at > at))
    }

    /// The filter as recorded in the audit entry.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "from": self.from.map(timestamp),
            "to": self.to.map(timestamp),
            "service_id": self.service.as_ref().map(ToString::to_string),
            "unexported_only": self.unexported_only,
        })
    }
}

/// One export: which referrals, whether to mark them, and who asked (for the audit log).
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    pub filter: ExportFilter,
    /// Mark the rows written as exported once the whole file is taken.
    pub mark_exported: bool,
    /// Start with a UTF-8 byte order mark, for Excel.
    pub excel: bool,
    /// Recorded in the `EXPORTED_REFERRALS` audit entry (`cli:user`, `api:client`).
    pub actor: String,
}

/// Where an export's CSV goes: a file or terminal, or an HTTP response body.
#[async_trait]
pub trait CsvSink: Send {
    /// Takes the next bytes (whole rows); `rows` have been written so far.
    ///
    /// # Errors
    /// The reader is gone or the write failed: the export stops and marks nothing.
    async fn write(&mut self, chunk: Vec<u8>, rows: usize) -> io::Result<()>;

    /// Every byte has been written (`rows` rows): returns once the reader has taken them all.
    ///
    /// # Errors
    /// As [`CsvSink::write`].
    async fn finish(&mut self, rows: usize) -> io::Result<()>;
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the export could not read or record in the store")]
    Store(#[from] StoreError),
    /// The sink refused a write (the reader went away): nothing was marked.
    #[error("the export was not taken whole")]
    Sink(#[source] io::Error),
}

/// Runs `request` on `store`, writing every referral `visible` lets through into `sink`;
/// returns the number of rows. `visible` is asked only about referrals the filter keeps, so
/// the ones it lets through are exactly the rows written.
///
/// # Errors
/// [`ExportError::Sink`] when the sink gave up (nothing is audited or marked), and
/// [`ExportError::Store`] when the store could not be read, or the audit entry or marks could
/// not be written after a complete file.
pub async fn export(
    store: &dyn Store,
    request: &ExportRequest,
    visible: impl Fn(&ReferralRecord) -> bool + Send,
    sink: &mut dyn CsvSink,
) -> Result<usize, ExportError> {
    let filter = &request.filter;
    let mut buffer = Vec::with_capacity(CHUNK + 4096);
    if request.excel {
        buffer.extend_from_slice(BOM);
    }
    write_header(&mut buffer).map_err(ExportError::Sink)?;
    let (mut rows, mut written) = (0usize, Vec::new());
    let mut scan = Scan::new(filter);
    while let Some(batch) = scan.next(store, &visible).await? {
        for record in &batch {
            write_row(&mut buffer, record).map_err(ExportError::Sink)?;
            rows += 1;
            if request.mark_exported {
                written.push((record.referral.clone(), record.modified_at));
            }
            if buffer.len() >= CHUNK {
                let chunk = std::mem::replace(&mut buffer, Vec::with_capacity(CHUNK + 4096));
                sink.write(chunk, rows).await.map_err(ExportError::Sink)?;
            }
        }
    }
    if !buffer.is_empty() {
        sink.write(buffer, rows).await.map_err(ExportError::Sink)?;
    }
    sink.finish(rows).await.map_err(ExportError::Sink)?;
    record(store, request, rows, &written).await?;
    Ok(rows)
}

/// How many rows [`export`] would write for `filter` and `visible` now.
///
/// # Errors
/// The store's error when it cannot be read.
pub async fn count(
    store: &dyn Store,
    filter: &ExportFilter,
    visible: impl Fn(&ReferralRecord) -> bool,
) -> Result<usize, StoreError> {
    let mut scan = Scan::new(filter);
    let mut rows = 0;
    while let Some(batch) = scan.next(store, &visible).await? {
        rows += batch.len();
    }
    Ok(rows)
}

/// The referrals an export holds, read by modification time [`BATCH`] at a time: those the
/// filter keeps and `visible` lets through.
struct Scan<'f> {
    filter: &'f ExportFilter,
    after: Option<Vec<u8>>,
    done: bool,
}

impl<'f> Scan<'f> {
    fn new(filter: &'f ExportFilter) -> Self {
        Self {
            filter,
            after: None,
            done: false,
        }
    }

    /// The next batch's rows (possibly none), or `None` once the range is read.
    async fn next(
        &mut self,
        store: &dyn Store,
        visible: &impl Fn(&ReferralRecord) -> bool,
    ) -> Result<Option<Vec<ReferralRecord>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let (from, to) = (self.filter.from, self.filter.to);
        let batch = store
            .referrals_modified(from, to, self.after.take(), BATCH)
            .await?;
        self.after = batch.next;
        self.done = self.after.is_none();
        Ok(Some(
            batch
                .referrals
                .into_iter()
                .filter(|r| self.filter.keeps(r) && visible(r))
                .collect(),
        ))
    }
}

/// The audit entry of a complete export, then its marks (both attempted; the first failure is
/// returned).
async fn record(
    store: &dyn Store,
    request: &ExportRequest,
    rows: usize,
    written: &[(ReferralRef, OffsetDateTime)],
) -> Result<(), StoreError> {
    let audited = store
        .audit(
            "EXPORTED_REFERRALS",
            &request.actor,
            serde_json::json!({
                "rows": rows,
                "filter": request.filter.describe(),
                "mark_exported": request.mark_exported,
            }),
        )
        .await;
    if request.mark_exported {
        let marked = store
            .mark_exported(written, OffsetDateTime::now_utc())
            .await?;
        tracing::info!(rows, marked, "rows marked exported");
    }
    audited.map(drop)
}

/// A sink onto any writer (a file, stdout), buffered; with `progress`, a running count of rows
/// on stderr.
pub struct WriterSink<W: Write + Send> {
    out: io::BufWriter<W>,
    progress: bool,
}

impl<W: Write + Send> WriterSink<W> {
    pub fn new(out: W, progress: bool) -> Self {
        Self {
            out: io::BufWriter::new(out),
            progress,
        }
    }
}

#[async_trait]
impl<W: Write + Send> CsvSink for WriterSink<W> {
    async fn write(&mut self, chunk: Vec<u8>, rows: usize) -> io::Result<()> {
        self.out.write_all(&chunk)?;
        if self.progress {
            eprint!("\r{rows} referrals");
        }
        Ok(())
    }

    async fn finish(&mut self, _rows: usize) -> io::Result<()> {
        if self.progress {
            eprint!("\r");
        }
        self.out.flush()
    }
}

/// A date (`YYYY-MM-DD`) or RFC 3339 date-time; a bare date as an upper bound covers the day.
pub fn parse_bound(raw: &str, end_of_day: bool) -> Option<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Some(at);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let at = time::Date::parse(raw, format).ok()?.midnight().assume_utc();
    Some(if end_of_day {
        at + time::Duration::days(1) - time::Duration::nanoseconds(1)
    } else {
        at
    })
}
