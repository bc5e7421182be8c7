//! A file backend that holds everything redb writes while a store is being opened, and puts it on
//! the file only once the whole open (redb's own recovery, the schema check and update, the
//! library's recovery pass) has succeeded.
//!
//! An open refused part-way — a damaged file, a schema from a newer release — therefore leaves
//! the file byte-for-byte as it was, for another tool or a newer release to read. An accepted
//! open replays the held writes in their order, with a sync wherever redb synced, so the file
//! passes through the same crash-safe states redb meant it to. Until then a crash loses nothing:
//! the file is untouched and nothing has been acknowledged.
//!
//! What is held is what opening writes: the header, the allocator state, the schema record and
//! the recovery pass's repairs — a few pages, more after a crash that left replies streaming.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use crate::error::{Error, Result};

/// The redb backend of a store file being opened. Create it with [`staged`].
pub struct StagedFile {
    shared: Arc<Shared>,
}

/// The opener's handle: [`StagedWrites::persist`] puts the held writes on the file.
pub struct StagedWrites {
    shared: Arc<Shared>,
}

/// A backend over `file` that holds every write, and the handle that releases them.
pub fn staged(file: FileBackend) -> (StagedFile, StagedWrites) {
    let shared = Arc::new(Shared {
        file,
        direct: AtomicBool::new(false),
        state: Mutex::new(State::Holding(Held::default())),
    });
    (
        StagedFile {
            shared: shared.clone(),
        },
        StagedWrites { shared },
    )
}

struct Shared {
    file: FileBackend,
    /// Set (after `state` became `Direct`) so that reads and writes skip the lock from then on.
    direct: AtomicBool,
    state: Mutex<State>,
}

enum State {
    /// Nothing has reached the file yet.
    Holding(Held),
    /// The held writes are on the file; everything goes straight to it.
    Direct,
    /// Replaying the held writes failed part-way. The file is then in one of the states a crash
    /// at that point would have left (redb repairs it on the next open); nothing more may be
    /// written to it, since this handle's view no longer matches it.
    Failed(String),
}

#[derive(Default)]
struct Held {
    /// Length of the file when the open started (`None` until first asked).
    file_len: Option<u64>,
    /// Length of the storage as redb sees it.
    len: Option<u64>,
    /// Every write, resize and sync, in the order redb issued them.
    log: Vec<Op>,
}

enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

impl StagedWrites {
    /// Writes everything held to the file in issue order, syncing where redb synced, then lets
    /// every later call through. Calling it again does nothing.
    pub fn persist(&self) -> Result<()> {
        let mut state = self.shared.state.lock();
        let held = match std::mem::replace(&mut *state, State::Direct) {
            State::Holding(held) => held,
            State::Direct => return Ok(()),
            State::Failed(reason) => {
                *state = State::Failed(reason.clone());
                return Err(Error::storage(reason));
            }
        };
        let file = &self.shared.file;
        // Exactly what redb asked for, in its order: a commit it made durable ends in a sync
        // here too, and one it did not (a non-durable store) costs no sync here either.
        let replayed = held.log.iter().try_for_each(|op| match op {
            Op::Write { offset, data } => file.write(*offset, data),
            Op::SetLen(len) => file.set_len(*len),
            Op::Sync => file.sync_data(),
        });
        if let Err(err) = replayed {
            let reason = format!("cannot write the opened store to its file: {err}");
            *state = State::Failed(reason.clone());
            return Err(Error::storage(reason));
        }
        self.shared.direct.store(true, Ordering::Release);
        Ok(())
    }
}

impl Held {
    fn file_len(&mut self, file: &FileBackend) -> io::Result<u64> {
        match self.file_len {
            Some(len) => Ok(len),
            None => {
                let len = file.len()?;
                self.file_len = Some(len);
                Ok(len)
            }
        }
    }

    fn len(&mut self, file: &FileBackend) -> io::Result<u64> {
        match self.len {
            Some(len) => Ok(len),
            None => self.file_len(file),
        }
    }

    /// The bytes at `offset` as the file would hold them had every held op been applied: the
    /// file's own bytes, then each write and resize in order (a shrink zeroes what a later
    /// growth exposes, as a file does).
    fn read(&mut self, file: &FileBackend, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past u64::MAX"))?;
        if end > self.len(file)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {offset}..{end} past the end of the store"),
            ));
        }
        out.fill(0);
        let from_file = self.file_len(file)?.min(end);
        if offset < from_file {
            file.read(offset, &mut out[..(from_file - offset) as usize])?;
        }
        for op in &self.log {
            match op {
                Op::Write { offset: at, data } => {
                    let start = (*at).max(offset);
                    let stop = (at + data.len() as u64).min(end);
                    if start < stop {
                        out[(start - offset) as usize..(stop - offset) as usize]
                            .copy_from_slice(&data[(start - at) as usize..(stop - at) as usize]);
                    }
                }
                Op::SetLen(len) if *len < end => {
                    out[((*len).max(offset) - offset) as usize..].fill(0);
                }
                Op::SetLen(_) | Op::Sync => {}
            }
        }
        Ok(())
    }
}

impl StagedFile {
    fn direct(&self) -> bool {
        self.shared.direct.load(Ordering::Acquire)
    }
}

fn failed(reason: &str) -> io::Error {
    io::Error::other(reason.to_owned())
}

/// Forwards redb's byte-range lock methods to the file backend.
macro_rules! delegate_range_locks {
    ($($method:ident -> $locked:ty),* $(,)?) => {
        $(fn $method(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> std::result::Result<$locked, BackendError> {
            self.shared.file.$method(start, end)
        })*
    };
}

impl StorageBackend for StagedFile {
    fn len(&self) -> io::Result<u64> {
        let file = &self.shared.file;
        if self.direct() {
            return file.len();
        }
        match &mut *self.shared.state.lock() {
            State::Holding(held) => held.len(file),
            State::Direct => file.len(),
            State::Failed(reason) => Err(failed(reason)),
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let file = &self.shared.file;
        if self.direct() {
            return file.read(offset, out);
        }
        match &mut *self.shared.state.lock() {
            State::Holding(held) => held.read(file, offset, out),
            State::Direct => file.read(offset, out),
            State::Failed(reason) => Err(failed(reason)),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let file = &self.shared.file;
        if self.direct() {
            return file.set_len(len);
        }
        match &mut *self.shared.state.lock() {
            State::Holding(held) => {
                held.file_len(file)?;
                held.len = Some(len);
                held.log.push(Op::SetLen(len));
                Ok(())
            }
            State::Direct => file.set_len(len),
            State::Failed(reason) => Err(failed(reason)),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let file = &self.shared.file;
        if self.direct() {
            return file.sync_data();
        }
        match &mut *self.shared.state.lock() {
            State::Holding(held) => {
                if !matches!(held.log.last(), Some(Op::Sync) | None) {
                    held.log.push(Op::Sync);
                }
                Ok(())
            }
            State::Direct => file.sync_data(),
            State::Failed(reason) => Err(failed(reason)),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let file = &self.shared.file;
        if self.direct() {
            return file.write(offset, data);
        }
        match &mut *self.shared.state.lock() {
            State::Holding(held) => {
                let end = offset.checked_add(data.len() as u64).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "write past u64::MAX")
                })?;
                // A write past the end grows a file.
                let len = held.len(file)?;
                held.len = Some(len.max(end));
                held.log.push(Op::Write {
                    offset,
                    data: data.to_vec(),
                });
                Ok(())
            }
            State::Direct => file.write(offset, data),
            State::Failed(reason) => Err(failed(reason)),
        }
    }

    // Locks and close go to the file whatever the state: they guard the file against other
    // handles and processes, and change none of its bytes.

    fn close(&self) -> io::Result<()> {
        self.shared.file.close()
    }

    // Range locks guard the file itself, not the staged pages: they go straight to it.
    delegate_range_locks!(
        try_lock_range -> bool,
        try_lock_shared_range -> bool,
        lock_range -> (),
        lock_shared_range -> (),
        unlock_range -> (),
        query_lock_range -> bool,
    );
}

impl fmt::Debug for StagedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedFile")
            .field("file", &self.shared.file)
            .field("direct", &self.direct())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as a byte vector: what the held writes must look like before they are persisted
    /// and what the file must hold after.
    #[derive(Default)]
    struct Model(Vec<u8>);

    impl Model {
        fn write(&mut self, offset: usize, data: &[u8]) {
            if self.0.len() < offset + data.len() {
                self.0.resize(offset + data.len(), 0);
            }
            self.0[offset..offset + data.len()].copy_from_slice(data);
        }
    }

    fn backend_over(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, FileBackend) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, path, FileBackend::new(file).unwrap())
    }

    /// Random writes, shrinks and growths against the model: reads while held see exactly the
    /// model, the file stays as it was until `persist`, and holds exactly the model after.
    #[test]
    fn held_writes_read_back_as_a_file_would_and_persist_in_order() {
        let mut state = 0x5eed_u64;
        let mut next = |bound: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as usize) % bound
        };
        for round in 0..50 {
            let original: Vec<u8> = (0..next(3000)).map(|i| (i * 7 + round) as u8).collect();
            let (_dir, path, file) = backend_over(&original);
            let (staged, writes) = staged(file);
            let mut model = Model(original.clone());
            for step in 0..40 {
                match next(10) {
                    0..=5 => {
                        let offset = next(4000);
                        let data: Vec<u8> = (0..1 + next(700)).map(|_| next(256) as u8).collect();
                        staged.write(offset as u64, &data).unwrap();
                        model.write(offset, &data);
                    }
                    6 | 7 => {
                        let len = next(5000);
                        staged.set_len(len as u64).unwrap();
                        model.0.resize(len, 0);
                    }
                    8 => staged.sync_data().unwrap(),
                    _ => {
                        let len = model.0.len();
                        assert_eq!(staged.len().unwrap(), len as u64, "round {round} {step}");
                        let offset = next(len + 1);
                        let mut out = vec![0xee; next(len - offset + 1)];
                        staged.read(offset as u64, &mut out).unwrap();
                        assert_eq!(
                            out,
                            model.0[offset..offset + out.len()],
                            "round {round} step {step}"
                        );
                        let mut past = vec![0; 1];
                        assert!(staged.read(len as u64, &mut past).is_err());
                    }
                }
            }
            assert_eq!(
                std::fs::read(&path).unwrap(),
                original,
                "held writes leaked"
            );
            writes.persist().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), model.0, "round {round}");
            // From now on everything goes straight to the file.
            staged.write(0, b"direct").unwrap();
            model.write(0, b"direct");
            assert_eq!(std::fs::read(&path).unwrap(), model.0);
        }
    }
}
