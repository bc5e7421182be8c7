//! Hooks for the crate's own tests, examples and benchmarks (the `testing` feature): what a
//! host never needs. Nothing here is stable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::StorageBackend;

/// What a [`CountingBackend`] has passed to the backend below it.
#[derive(Debug, Default)]
pub struct DiskCounts {
    syncs: AtomicU64,
    bytes_written: AtomicU64,
}

impl DiskCounts {
    /// `sync_data` calls: one per durable commit (an fsync on a file).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Bytes handed to `write`.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::SeqCst)
    }
}

/// A redb storage backend that counts the fsyncs and bytes written that reach the backend it
/// wraps (`InMemoryBackend`, `FileBackend`, …), for [`crate::Coven::open_with_backend`].
#[derive(Debug)]
pub struct CountingBackend<B> {
    inner: B,
    counts: Arc<DiskCounts>,
}

impl<B: StorageBackend> CountingBackend<B> {
    /// The backend and the counts it keeps, readable while the store uses it.
    pub fn new(inner: B) -> (Self, Arc<DiskCounts>) {
        let counts = Arc::new(DiskCounts::default());
        (
            Self {
                inner,
                counts: counts.clone(),
            },
            counts,
        )
    }
}

impl<B: StorageBackend> StorageBackend for CountingBackend<B> {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.counts.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.counts
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        self.inner.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.inner.close()
    }
}
