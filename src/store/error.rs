//! What can go wrong at the storage boundary, with the cause kept as the error's source.

use std::path::PathBuf;

/// The underlying error a [`StoreError`] was caused by (a sled or I/O error, a JSON error).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Errors at the storage boundary. Each says what the store was doing; the underlying error, if
/// any, is its [`source`](std::error::Error::source) ([`StoreError::chain`] prints both).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data dir (a running service, or a command on it).
    #[error("data dir {} is in use by another process", dir.display())]
    InUse { dir: PathBuf },
    /// The store cannot read or write now (closed, being reopened, shutting down). Callers
    /// answer 503 and the sender retries.
    #[error("storage unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// Reading or writing the disk failed (disk full, an I/O error). The store recovers by
    /// itself once the disk takes writes again (see
    /// [`MaintenanceStore::health`](super::maintenance::MaintenanceStore::health)); callers
    /// answer 503 meanwhile.
    #[error("storage I/O failed: {context}")]
    Io {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// Reading or writing the disk failed in a way waiting will not cure (a read-only or
    /// vanished filesystem, no permission, corruption); callers answer 503, and the store's
    /// health says it needs an operator.
    #[error("storage failed: {context}")]
    Failed {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The store's write queue is full: too many writes are waiting. Nothing was written;
    /// callers answer 503 with `Retry-After` and the sender retries.
    #[error("storage busy: {context}")]
    Busy { context: String },
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {context}")]
    Corrupt {
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    pub fn io(context: impl Into<String>) -> Self {
        Self::Io {
            context: context.into(),
            source: None,
        }
    }

    pub fn failed(context: impl Into<String>) -> Self {
        Self::Failed {
            context: context.into(),
            source: None,
        }
    }

    pub fn corrupt(context: impl Into<String>) -> Self {
        Self::Corrupt {
            context: context.into(),
            source: None,
        }
    }

    /// The same error, caused by `cause`.
    #[must_use]
    pub fn caused_by(mut self, cause: impl Into<Cause>) -> Self {
        match &mut self {
            Self::InUse { .. } | Self::Busy { .. } => {}
            Self::Unavailable { source, .. }
            | Self::Io { source, .. }
            | Self::Failed { source, .. }
            | Self::Corrupt { source, .. } => *source = Some(cause.into()),
        }
        self
    }

    /// True when the disk failed (recovery may be needed): [`StoreError::Io`] and
    /// [`StoreError::Failed`].
    pub fn is_disk_failure(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Failed { .. })
    }

    /// An error of the same kind, saying the same (its causes as text): for answering every
    /// write a failure covered.
    #[must_use]
    pub fn replicate(&self) -> Self {
        let context = self.chain();
        match self {
            Self::InUse { dir } => Self::InUse { dir: dir.clone() },
            Self::Busy { context } => Self::Busy {
                context: context.clone(),
            },
            Self::Unavailable { .. } => Self::unavailable(context),
            Self::Io { .. } => Self::io(context),
            Self::Failed { .. } => Self::failed(context),
            Self::Corrupt { .. } => Self::corrupt(context),
        }
    }

    /// The error and its causes, `error: cause: cause`, for health reports and messages.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_as_the_source_and_shown_in_the_chain() {
        let io = std::io::Error::other("No space left on device");
        let e = StoreError::io("flushing to disk failed").caused_by(io);
        assert_eq!(e.to_string(), "storage I/O failed: flushing to disk failed");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "No space left on device"
        );
        assert_eq!(
            e.chain(),
            "storage I/O failed: flushing to disk failed: No space left on device"
        );
        assert!(e.is_disk_failure());
        assert!(!StoreError::corrupt("x").is_disk_failure());
        let busy = StoreError::InUse {
            dir: PathBuf::from("/data"),
        };
        assert_eq!(busy.chain(), "data dir /data is in use by another process");
    }
}
