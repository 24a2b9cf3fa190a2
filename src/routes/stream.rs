//! Response bodies made while they are sent: the CSV export (the API's and the console's
//! alike), and the chunks any streamed body (the live backup too) is made of.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::export::{CsvSink, ExportError, ExportRequest, export};
use crate::state::AppState;
use crate::store::ReferralRecord;
use crate::telemetry::Metrics;

/// Runs `request` over the referrals `visible` lets through and streams the CSV as the response
/// body (`referrals.csv`, as an attachment). Rows are marked exported (when asked) only once the
/// client has taken the whole body; a store failure part way breaks the transfer rather than end
/// it looking whole. The API's export and the console's backup alike.
pub fn stream_export(
    state: &AppState,
    request: ExportRequest,
    visible: impl Fn(&ReferralRecord) -> bool + Send + Sync + 'static,
) -> Response {
    let (chunks, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (finished, taken) = oneshot::channel::<()>();
    let mut sink = ChannelSink {
        chunks: Some(chunks),
        taken: Some(taken),
        metrics: state.metrics.clone(),
    };
    let store = state.store.clone();
    tokio::spawn(
        async move {
            match export(store.as_ref(), &request, visible, &mut sink).await {
                Ok(_) => {}
                Err(ExportError::Sink(_)) => {
                    tracing::info!("export cut off by the client; nothing marked");
                }
                Err(ExportError::Store(e)) if sink.abort().await => {
                    tracing::error!(error = %e, "export stopped: the store could not be read");
                }
                Err(ExportError::Store(e)) => {
                    tracing::error!(error = %e, "export complete, but the audit entry or the marks could not be written");
                }
            }
        }
        // Its log lines keep the request's id.
        .in_current_span(),
    );

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
    response
}

/// The export's side of the response body: chunks go out through a channel; once the last is
/// written, it waits for the body to report that the client took it.
struct ChannelSink {
    /// Dropped once the last chunk is written, which ends the body.
    chunks: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    taken: Option<oneshot::Receiver<()>>,
    metrics: Metrics,
}

impl ChannelSink {
    /// Before the body is complete, aborts it with an error item, so the client sees a broken
    /// transfer rather than a short file that looks whole (the status line is long sent).
    /// False when the body was already complete.
    async fn abort(&mut self) -> bool {
        match self.chunks.take() {
            Some(chunks) => {
                let _ = chunks
                    .send(Err(std::io::Error::other("store unavailable")))
                    .await;
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl CsvSink for ChannelSink {
    async fn write(&mut self, chunk: Vec<u8>, _rows: usize) -> std::io::Result<()> {
        let gone = || std::io::Error::other("the client went away");
        let chunks = self.chunks.as_ref().ok_or_else(gone)?;
        chunks
            .send(Ok(Bytes::from(chunk)))
            .await
            .map_err(|_| gone())
    }

    async fn finish(&mut self, rows: usize) -> std::io::Result<()> {
        // Counted before the stream ends, so a client that has read it all sees the count.
        self.metrics.export_rows(rows as u64);
        self.chunks = None;
        // Only once the response body has handed out its last chunk is the export complete.
        match self.taken.take() {
            Some(taken) => taken
                .await
                .map_err(|_| std::io::Error::other("the client did not take the whole file")),
            None => Ok(()),
        }
    }
}

/// The response body: chunks from the export task; reports when the last one was taken (to
/// `finished`, when given). Also the backup's body.
pub struct Chunks {
    pub receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    pub finished: Option<oneshot::Sender<()>>,
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
