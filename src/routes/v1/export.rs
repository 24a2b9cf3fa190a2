//! `GET /api/v1/export.csv`: the referral backup as CSV, streamed as it is read from the store
//! (memory stays flat whatever the size), filtered by modification date.
//!
//! With `mark_exported=true` the rows written are marked exported only once the whole file has
//! been taken by the client: an export cut off part way marks nothing.

use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::Instrument;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use utoipa::IntoParams;

use super::extract::{Caller, ProblemDoc, Query, instant, service_param};
use crate::domain::ReferralRef;
use crate::error::Problem;
use crate::export::{BOM, ExportFilter, write_header, write_row};
use crate::state::AppState;

/// Bytes gathered before a chunk is sent.
const CHUNK: usize = 64 * 1024;
/// Referrals read from the store at a time.
const BATCH: usize = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Modified at or after this date (YYYY-MM-DD) or RFC 3339 date-time.
    from: Option<String>,
    /// Modified at or before this date (the whole day) or date-time.
    to: Option<String>,
    service_id: Option<String>,
    /// Only referrals never exported, or modified since their last export.
    unexported_only: Option<bool>,
    /// Mark the rows written as exported once the file is complete.
    mark_exported: Option<bool>,
    /// Start with a UTF-8 byte order mark for Excel.
    excel: Option<bool>,
}

/// Export referrals as CSV (Ocean's columns, then External Service ID, Last Modified and
/// Exported At), ordered by modification.
#[utoipa::path(
    get,
    path = "/export.csv",
    params(ExportQuery),
    responses(
        (status = 200, description = "The CSV file, streamed", content_type = "text/csv"),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "service_id outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn export_csv(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<ExportQuery>,
) -> Result<Response, Problem> {
    let from = q
        .from
        .as_deref()
        .map(|f| instant("from", f, false))
        .transpose()?;
    let to =
        q.to.as_deref()
            .map(|t| instant("to", t, true))
            .transpose()?;
    let service = service_param(&client, q.service_id.as_deref())?;
    let filter = ExportFilter {
        from,
        to,
        service,
        unexported_only: q.unexported_only.unwrap_or(false),
    };
    let (mark, excel) = (q.mark_exported.unwrap_or(false), q.excel.unwrap_or(false));

    let (chunks, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (finished, taken) = oneshot::channel::<()>();
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let mut buffer = Vec::with_capacity(CHUNK + 4096);
        if excel {
            buffer.extend_from_slice(BOM);
        }
        let mut written: Vec<(ReferralRef, OffsetDateTime)> = Vec::new();
        let mut rows = 0usize;
        let _ = write_header(&mut buffer);
        let mut after = None;
        loop {
            let batch = match store
                .referrals_modified(filter.from, filter.to, after, BATCH)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    // The status line is long sent: an error item aborts the response, so the
                    // client sees a broken transfer rather than a short file that looks whole.
                    tracing::error!(error = %e, "export stopped: the store could not be read");
                    let _ = chunks
                        .send(Err(std::io::Error::other("store unavailable")))
                        .await;
                    return;
                }
            };
            for record in &batch.referrals {
                let visible = client.may_see(record.service_id.as_ref()) && filter.keeps(record);
                if !visible {
                    continue;
                }
                let _ = write_row(&mut buffer, record);
                rows += 1;
                if mark {
                    written.push((record.referral.clone(), record.modified_at));
                }
                if buffer.len() >= CHUNK {
                    let chunk = Bytes::from(std::mem::take(&mut buffer));
                    if chunks.send(Ok(chunk)).await.is_err() {
                        tracing::info!("export cut off by the client; nothing marked");
                        return;
                    }
                }
            }
            after = batch.next;
            if after.is_none() {
                break;
            }
        }
        if !buffer.is_empty() && chunks.send(Ok(Bytes::from(buffer))).await.is_err() {
            tracing::info!("export cut off by the client; nothing marked");
            return;
        }
        // Counted before the stream ends, so a client that has read it all sees the count.
        metrics.export_rows(rows as u64);
        drop(chunks);
        // Only once the response body has handed out its last chunk is the export complete.
        if taken.await.is_err() {
            tracing::info!("export cut off by the client; nothing marked");
            return;
        }
        let audited = store
            .audit(
                "EXPORTED_REFERRALS",
                &format!("api:{}", client.name),
                serde_json::json!({
                    "rows": rows,
                    "filter": filter.describe(),
                    "mark_exported": mark,
                }),
            )
            .await;
        if let Err(e) = audited {
            tracing::error!(error = %e, "export complete, but the audit entry could not be written");
        }
        if mark {
            match store
                .mark_exported(&written, OffsetDateTime::now_utc())
                .await
            {
                Ok(marked) => tracing::info!(rows, marked, "rows marked exported"),
                Err(e) => tracing::error!(error = %e, "export complete, but marking failed"),
            }
        }
    }
    // Its log lines keep the request's id.
    .in_current_span());

    let mut response = (
        StatusCode::OK,
        Body::from_stream(Chunks {
            receiver,
            finished: Some(finished),
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"referrals.csv\""),
    );
    Ok(response)
}

/// The response body: chunks from the export task; reports when the last one was taken.
struct Chunks {
    receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    finished: Option<oneshot::Sender<()>>,
}

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(chunk)),
            Poll::Ready(None) => {
                if let Some(finished) = self.finished.take() {
                    let _ = finished.send(());
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
