//! The spool's writer: one thread per agent does every spool write of the fleet
//! (appends, new segment files, deletions), so that a slow or stalling disk (an SD
//! card flushing its cache can stop writes for seconds) never blocks the runtime
//! thread on which the devices' MQTT connections, keep-alives and live readings
//! run. Before, an 8-second stall froze every device past its keep-alive.
//!
//! A reading is queued here and handed to MQTT from memory at once; the spool
//! reads back from disk only what the writer has written. A crash loses what is still queued unless
//! MQTT already has it, as a crash between taking a reading and writing it always
//! could; a clean stop drains the queue ([`SpoolWriter::close`]).
//!
//! Bounded: once `MAX_QUEUED` jobs wait, devices wait for room
//! ([`SpoolWriter::room`]) before queueing another reading, so a disk that cannot
//! keep up slows the readings' sources instead of growing memory.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Notify;

use crate::open_files::{OpenFileBudget, OpenFileSlot};

/// Jobs queued before devices wait for room: a minute of a 250-device fleet at
/// 1 Hz, ~1 MB of records.
const MAX_QUEUED: usize = 16_384;

/// Spool appends written by this process, so that the periodic sync knows whether
/// there is anything to make durable.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Appends written so far by every spool of the process.
pub(crate) fn writes() -> u64 {
    WRITES.load(Ordering::Acquire)
}

/// One segment file as the writer sees it. The spool keeps one per segment and
/// reads back only the records the writer has written.
pub(crate) struct SegmentFile {
    path: PathBuf,
    /// The open file and its share of the open-file budget; the writer's alone.
    held: Mutex<Option<(File, OpenFileSlot)>>,
    budget: OpenFileBudget,
    written_bytes: AtomicU64,
    written_records: AtomicU32,
    failed: AtomicBool,
}

impl SegmentFile {
    /// A segment the writer is to create (queue [`SpoolWriter::create`] first).
    pub(crate) fn new(path: PathBuf, budget: OpenFileBudget) -> Arc<Self> {
        Arc::new(Self {
            path,
            held: Mutex::new(None),
            budget,
            written_bytes: AtomicU64::new(0),
            written_records: AtomicU32::new(0),
            failed: AtomicBool::new(false),
        })
    }

    /// A segment found on disk at start, `records` readings in `bytes`.
    pub(crate) fn on_disk(path: PathBuf, records: u32, bytes: u64) -> Arc<Self> {
        let f = Self::new(path, OpenFileBudget::new(0));
        f.written_bytes.store(bytes, Ordering::Release);
        f.written_records.store(records, Ordering::Release);
        f
    }

    /// Bytes of whole records on file.
    pub(crate) fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Acquire)
    }

    /// Records on file.
    pub(crate) fn written_records(&self) -> u32 {
        self.written_records.load(Ordering::Acquire)
    }

    /// Whether a write failed: the file holds the first [`Self::written_records`]
    /// records, and no later append reaches it.
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn held(&self) -> MutexGuard<'_, Option<(File, OpenFileSlot)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(&self) {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => *self.held() = self.budget.take().map(|slot| (file, slot)),
            Err(e) => self.fail(&e),
        }
    }

    fn append(&self, record: &[u8]) {
        if self.failed() {
            return;
        }
        let mut held = self.held();
        let written = match &mut *held {
            Some((file, _)) => file.write_all(record),
            None => OpenOptions::new()
                .append(true)
                .open(&self.path)
                .and_then(|mut f| f.write_all(record)),
        };
        match written {
            Ok(()) => {
                self.written_bytes
                    .fetch_add(record.len() as u64, Ordering::AcqRel);
                self.written_records.fetch_add(1, Ordering::AcqRel);
                WRITES.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                // Cut off whatever part of the record reached the file.
                let good = self.written_bytes();
                let _ = match &*held {
                    Some((file, _)) => file.set_len(good),
                    None => OpenOptions::new()
                        .write(true)
                        .open(&self.path)
                        .and_then(|f| f.set_len(good)),
                };
                *held = None;
                drop(held);
                self.fail(&e);
            }
        }
    }

    fn fail(&self, e: &std::io::Error) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(path = %self.path.display(), error = %e,
                "Cannot write a spool segment; readings not yet delivered from it are lost.");
        }
    }
}

enum Job {
    Create(Arc<SegmentFile>),
    Release(Arc<SegmentFile>),
    Append(Arc<SegmentFile>, Vec<u8>),
    Remove(PathBuf),
    /// Tests: the writer waits for a message (a disk that stalls on cue).
    #[cfg(test)]
    Stall(std::sync::mpsc::Receiver<()>),
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    busy: bool,
    closed: bool,
    /// The writer waits for work: only then is it signalled (a signal is a
    /// syscall, and a fleet queues a thousand appends a second).
    sleeping: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the writer is closed.
    work: Condvar,
    /// Signalled when the queue is empty and the writer idle.
    idle: Condvar,
    /// Notified when jobs were done (room for more).
    room: Notify,
    queued: AtomicUsize,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to the agent's spool writer; clones share it. The thread starts with
/// the first job.
#[derive(Clone, Default)]
pub struct SpoolWriter {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("queued", &self.shared.queued.load(Ordering::Relaxed))
            .finish()
    }
}

impl SpoolWriter {
    /// Queues the creation of `file`.
    pub(crate) fn create(&self, file: &Arc<SegmentFile>) {
        self.push(Job::Create(Arc::clone(file)));
    }

    /// Queues closing `file` (no more appends to it), which frees its share of
    /// the open-file budget.
    pub(crate) fn release(&self, file: &Arc<SegmentFile>) {
        self.push(Job::Release(Arc::clone(file)));
    }

    /// Queues `record` for the end of `file`.
    pub(crate) fn append(&self, file: &Arc<SegmentFile>, record: Vec<u8>) {
        self.push(Job::Append(Arc::clone(file), record));
    }

    /// Queues the deletion of `path` (after every job queued before it).
    pub(crate) fn remove(&self, path: PathBuf) {
        self.push(Job::Remove(path));
    }

    /// Waits while `MAX_QUEUED` jobs are queued, until half of them are done.
    pub async fn room(&self) {
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.queued.load(Ordering::Acquire) < MAX_QUEUED {
                return;
            }
            notified.await;
        }
    }

    /// Blocks until every job queued so far is done.
    #[cfg(test)]
    pub fn wait_idle(&self) {
        let mut q = self.shared.queue();
        while !q.jobs.is_empty() || q.busy {
            q = self.shared.idle.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Does every queued job, then stops the thread.
    pub async fn close(&self) {
        {
            let mut q = self.shared.queue();
            q.closed = true;
            q.sleeping = false;
        }
        self.shared.work.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Tests: a writer that does each job as it is queued, on the caller's thread.
    #[cfg(test)]
    pub(crate) fn inline() -> Self {
        let w = Self::default();
        w.shared.queue().closed = true;
        w
    }

    /// Tests: the writer thread stops at this point of the queue until the
    /// returned sender sends (or is dropped).
    #[cfg(test)]
    pub(crate) fn stall(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.push(Job::Stall(rx));
        tx
    }

    fn push(&self, job: Job) {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        {
            let mut q = self.shared.queue();
            if q.closed {
                // After close (a device still stopping): written here and now.
                drop(q);
                run(&self.shared, job);
                return;
            }
            q.jobs.push_back(job);
            if q.sleeping {
                q.sleeping = false;
                self.shared.work.notify_one();
            }
        }
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if thread.is_none() {
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new()
                .name("hb-spool-writer".into())
                .stack_size(256 * 1024)
                .spawn(move || work(&shared))
            {
                Ok(t) => *thread = Some(t),
                Err(e) => {
                    // Without a thread the queue is written by whoever queues.
                    tracing::warn!(error = %e, "Cannot start the spool writer thread; writing inline.");
                    drop(thread);
                    let jobs: Vec<_> = self.shared.queue().jobs.drain(..).collect();
                    for job in jobs {
                        run(&self.shared, job);
                    }
                }
            }
        }
    }
}

/// The writer thread: jobs in the order queued, until closed and drained.
fn work(shared: &Shared) {
    loop {
        let jobs: Vec<Job> = {
            let mut q = shared.queue();
            while q.jobs.is_empty() && !q.closed {
                q.sleeping = true;
                q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            q.sleeping = false;
            if q.jobs.is_empty() {
                shared.idle.notify_all();
                return;
            }
            q.busy = true;
            let n = q.jobs.len().min(1024);
            q.jobs.drain(..n).collect()
        };
        for job in jobs {
            run(shared, job);
        }
        let mut q = shared.queue();
        q.busy = false;
        if q.jobs.is_empty() {
            shared.idle.notify_all();
        }
    }
}

fn run(shared: &Shared, job: Job) {
    fault_stall();
    match job {
        Job::Create(file) => file.create(),
        Job::Release(file) => *file.held() = None,
        Job::Append(file, record) => file.append(&record),
        #[cfg(test)]
        Job::Stall(resume) => {
            let _ = resume.recv();
        }
        Job::Remove(path) => match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Cannot delete a spool segment.")
            }
        },
    }
    // Devices waiting for room are woken once, when the queue is down to half
    // (not after every job: that would wake them all a thousand times).
    if shared.queued.fetch_sub(1, Ordering::AcqRel) == MAX_QUEUED / 2 + 1 {
        shared.room.notify_waiters();
    }
}

/// Fault injection for the slow-disk test: with `HB_FAULT_SPOOL_STALL=N,MS` in the
/// environment, every N-th spool write of the process first sleeps MS milliseconds,
/// as an SD card does when it flushes.
fn fault_stall() {
    static PLAN: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    static JOBS: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let v = std::env::var("HB_FAULT_SPOOL_STALL").ok()?;
        let (every, ms) = v.split_once(',')?;
        Some((every.trim().parse().ok()?, ms.trim().parse().ok()?))
    });
    if let Some((every, ms)) = *plan {
        if every > 0 && (JOBS.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every) {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use super::super::tests::{config, reading, threaded};
    use crate::spool::{FullPolicy, Spool};

    #[tokio::test]
    async fn closing_the_writer_writes_everything_still_queued() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = threaded(1000, 256);
        let writer = cfg.writer.clone();
        let mut s = Spool::open(dir.path(), cfg).unwrap();
        let resume = writer.stall();
        for seq in 0..50 {
            s.append(&reading(1, seq)).unwrap();
        }
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let _ = resume.send(());
        });
        writer.close().await;
        let bytes = s.segments[0].bytes;
        drop(s);
        assert_eq!(
            fs::metadata(dir.path().join("0000000001-0000000000.seg"))
                .unwrap()
                .len(),
            bytes
        );
        let again = Spool::open(dir.path(), config(1000, 256, FullPolicy::DropOldest)).unwrap();
        assert_eq!(again.stats().recovered, 50);
    }
}
