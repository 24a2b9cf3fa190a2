//! How the embedded store is opened.

use crate::store::seal::Keyring;

/// How the embedded store is opened: its keys, its page cache and its write queue.
pub struct SledOptions {
    /// Keys sealing records that hold patient data; `None` stores them unencrypted.
    pub keys: Option<Keyring>,
    /// sled's page cache, in bytes (sled's own default is 1 GiB).
    pub cache_bytes: u64,
    /// How many writes may wait for the writer thread; a delivery that finds the queue full
    /// is refused with [`StoreError::Busy`](crate::store::StoreError::Busy).
    pub write_queue: usize,
}

impl Default for SledOptions {
    /// No keys, a 64 MiB cache, a queue of 1024 writes (the defaults of `[storage]`).
    fn default() -> Self {
        Self {
            keys: None,
            cache_bytes: 64 << 20,
            write_queue: 1024,
        }
    }
}
