//! `GET /api/v1/backup`: a consistent backup of the whole embedded store while the service runs
//! (see [`crate::backup`] for the file), streamed as it is written.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::extract::{Caller, ProblemDoc};
use crate::error::{AppError, Problem};
use crate::state::AppState;

/// Chunks of the archive in flight to the client.
const IN_FLIGHT: usize = 4;
/// Bytes per chunk.
const CHUNK: usize = 256 * 1024;

/// The whole store as one `.tar.gz` file: a manifest, then a snapshot of the store taken when
/// the request arrived (every delivery acknowledged before it is in it). Records stay sealed
/// when encryption at rest is on. Only clients not limited to some service ids may take one,
/// one at a time. Restore it with `referral-relay restore FILE --data-dir DIR`.
#[utoipa::path(
    get,
    path = "/backup",
    responses(
        (status = 200, description = "The backup, streamed", content_type = "application/gzip"),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "A backup is already being taken, or the store is PostgreSQL (back it up with its own tools)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn backup(
    State(state): State<AppState>,
    Caller(client): Caller,
) -> Result<Response, Problem> {
    if !client.service_ids.is_empty() {
        return Err(AppError::Forbidden(format!(
            "client '{}' is limited to some service ids and may not take a backup of the whole store",
            client.name
        ))
        .into());
    }
    let Ok(permit) = state.backups.clone().try_acquire_owned() else {
        return Err(
            AppError::Conflict("a backup is being taken; retry when it is done".into()).into(),
        );
    };
    let dir = state.config().server.data_dir.join(format!(
        "{}{}",
        crate::backup::SNAPSHOT_PREFIX,
        uuid::Uuid::new_v4().simple()
    ));
    // The snapshot, its stream and the removal of its directory run in a task of their own,
    // holding the permit: a client that goes away mid-way leaves nothing behind.
    let (chunks, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(IN_FLIGHT);
    let (snapshot_taken, snapshot) = oneshot::channel();
    let (store, actor) = (state.store.clone(), format!("api:{}", client.name));
    tokio::spawn(
        async move {
            let _permit = permit;
            let info = match store.snapshot(&dir).await {
                Ok(Some(info)) => info,
                other => {
                    let _ = snapshot_taken.send(other.map(|_| false));
                    remove(dir).await;
                    return;
                }
            };
            let _ = snapshot_taken.send(Ok(true));
            let details = serde_json::json!({"feed_seq": info.feed_seq, "trees": info.trees});
            if let Err(e) = store.audit("BACKUP_TAKEN", &actor, details).await {
                tracing::error!(error = %e, "cannot audit a backup");
            }
            let written = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || {
                    crate::backup::manifest(&dir, info).and_then(|manifest| {
                        let out = std::io::BufWriter::with_capacity(
                            CHUNK,
                            ChannelWriter {
                                chunks: chunks.clone(),
                            },
                        );
                        let written = crate::backup::write(&dir, &manifest, out);
                        if written.is_err() {
                            // The client sees a broken transfer, not a short file that looks whole.
                            let _ =
                                chunks.blocking_send(Err(std::io::Error::other("backup stopped")));
                        }
                        written
                    })
                }
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "backup not completed"),
                Err(e) => tracing::error!(error = %e, "the backup task failed"),
            }
            remove(dir).await;
        }
        .in_current_span(),
    );
    match snapshot.await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            return Err(AppError::Conflict(
                "this service stores in PostgreSQL: back it up with PostgreSQL's own tools (pg_dump, base backups)".into(),
            )
            .into());
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(AppError::Internal(anyhow::anyhow!("the backup task ended early")).into());
        }
    }

    let body = Body::from_stream(crate::routes::stream::Chunks {
        receiver,
        finished: None,
    });
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    let name = format!(
        "attachment; filename=\"referral-relay-backup-{}.tar.gz\"",
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    if let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Removes a snapshot's directory, off the async threads.
async fn remove(dir: std::path::PathBuf) {
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    if let Ok(Err(e)) = removed
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "cannot remove a backup snapshot");
    }
}

/// Writes into the response body's channel, from a blocking thread.
struct ChannelWriter {
    chunks: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.chunks
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
