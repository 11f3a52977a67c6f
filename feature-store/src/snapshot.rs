//! Snapshots of the keyed window operator's state, so that a restart replays only what came
//! after the latest snapshot instead of the whole longest window.
//!
//! **Cut.** A snapshot file at cut `c` (ms, event time) holds, for one stage on one worker, the
//! state after every row and label with processing time `< c` and none after. Cuts are
//! multiples of the snapshot interval; each stage on each worker writes one when its frontier
//! passes a cut and at least [`SnapshotSettings::min_wall_ms`] of wall-clock time has gone by
//! since its last one (during a catch-up, most cuts are skipped). Workers and stages do not wait
//! for each other, so their newest cuts differ: a restart takes each one's newest usable file,
//! replays from the least cut (less a margin), and each stage skips, per entity, what its
//! entity's file holds already (processing time before that file's cut).
//!
//! **Files.** `DIR/cut-<c>/<stage>-<worker>-of-<workers>.snap`, written to a temporary name,
//! synced and renamed (a crash leaves no partial file under the final name):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `WEIRSNP1` |
//! | 4 | header length `h`, little endian |
//! | `h` | [`SnapshotHeader`], bincode 1 |
//! | 8 | payload length `p`, little endian |
//! | `p` | the stage's [`StageState`], bincode 1 |
//! | 4 | CRC-32 (IEEE, `crc32fast`) of everything before it, little endian |
//!
//! [`SnapshotStore::load_latest`] takes, for each stage and each worker of the newest run's
//! worker count, the newest file at or before a given cut that checks out (magic, lengths,
//! checksum, header, the same window definitions); a corrupt, partial or foreign file is
//! skipped, with a warning, for that worker's previous one. If some worker of some stage has
//! none, the snapshot cannot be used (a restart then replays the whole warm-up). Each worker
//! keeps, per stage, its files newer than [`SnapshotSettings::retain_ms`] before its newest
//! and the newest [`SnapshotSettings::keep`] older ones, and deletes the rest. The state is
//! re-sharded on load (each worker keeps the entities the exchange routes to it), so a restart
//! may change the worker count.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::keyed::StageState;

const MAGIC: &[u8; 8] = b"WEIRSNP1";

/// Errors reading or writing snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file or directory operation failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not a valid snapshot (truncated, bad magic, bad checksum, undecodable).
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What a snapshot file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotHeader {
    /// The stage (`Customer`, `Terminal`).
    pub stage: String,
    /// The worker that wrote it, `0..workers`.
    pub worker: u32,
    /// Workers of the run that wrote it.
    pub workers: u32,
    /// Stages per worker of that run.
    pub stages: u32,
    /// The cut, ms: the state after every event with processing time before it.
    pub cut_ms: u64,
    /// The stage's windows as `(window_ms, delay_ms)` and its columns (amounts, labels): a
    /// snapshot of other definitions is not loaded.
    pub definition: String,
}

/// Counters of the snapshots a process wrote and loaded.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Files written.
    pub written: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Files that could not be written.
    pub failed: AtomicU64,
    /// The latest cut written, ms.
    pub last_cut_ms: AtomicU64,
}

/// A directory of snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// How and where the keyed window operator writes snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// Where.
    pub store: SnapshotStore,
    /// The interval between cuts, ms (event time).
    pub interval_ms: u64,
    /// The least wall-clock time between two snapshots of a stage, ms (a topology sets it to
    /// the interval: during a catch-up, event time runs faster than the clock).
    pub min_wall_ms: u64,
    /// Files each worker keeps per stage at or before `retain_ms` behind its newest (older
    /// ones are deleted), at least 1.
    pub keep: usize,
    /// Files of cuts within this much of a worker's newest are kept as well, ms: a restart
    /// needs a cut at least its margin (`allowed_lateness + allowed_future`) before the first
    /// event not committed, so a topology sets this to that margin.
    pub retain_ms: u64,
    /// Counters.
    pub stats: Arc<SnapshotStats>,
}

/// One worker's file of one stage, as loaded.
#[derive(Debug, Clone, Default)]
pub struct RestoredPart {
    /// Its cut, ms: the state holds every event of the worker's entities with processing time
    /// before it.
    pub cut_ms: u64,
    /// The state.
    pub state: StageState,
}

/// A loaded snapshot of one stage: a file per worker of the run that wrote it, each with its own
/// cut.
#[derive(Debug, Clone, Default)]
pub struct RestoredStage {
    /// Workers of the run that wrote it.
    pub workers: u32,
    /// Its files, by worker (`parts[w]` is worker `w`'s).
    pub parts: Vec<RestoredPart>,
}

/// A loaded snapshot: every worker's newest usable state of every stage. Files are cut
/// independently (no worker waits for another), so their cuts differ: an entity's state holds
/// its events before the cut of the worker that owned it (`spread(id) % workers`).
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The least cut of all its files, ms: a replay from there (less the margin) feeds every
    /// state everything after its own cut.
    pub cut_ms: u64,
    /// The greatest cut of all its files, ms.
    pub max_cut_ms: u64,
    /// Stage name -> its files.
    pub stages: BTreeMap<String, RestoredStage>,
}

impl Restored {
    /// Entries in all logs of all stages.
    pub fn entries(&self) -> usize {
        self.stages
            .values()
            .flat_map(|s| &s.parts)
            .map(|p| p.state.entries())
            .sum()
    }
}

/// A snapshot file's place: its cut, stage, worker and worker count (from its name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FileName {
    cut_ms: u64,
    stage: String,
    worker: u32,
    workers: u32,
}

impl FileName {
    fn name(&self) -> String {
        format!("{}-{}-of-{}.snap", self.stage, self.worker, self.workers)
    }

    /// Parses `<stage>-<worker>-of-<workers>.snap` in cut directory `cut_ms`.
    fn parse(cut_ms: u64, name: &str) -> Option<Self> {
        let rest = name.strip_suffix(".snap")?;
        let (head, workers) = rest.rsplit_once("-of-")?;
        let (stage, worker) = head.rsplit_once('-')?;
        Some(Self {
            cut_ms,
            stage: stage.to_string(),
            worker: worker.parse().ok()?,
            workers: workers.parse().ok()?,
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SnapshotStore {
    /// A store in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cut_dir(&self, cut_ms: u64) -> PathBuf {
        self.dir.join(format!("cut-{cut_ms:020}"))
    }

    /// Writes one stage's state; returns the bytes written.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if the directory or the file cannot be written.
    pub fn write(&self, header: &SnapshotHeader, state: &StageState) -> Result<u64, SnapshotError> {
        let dir = self.cut_dir(header.cut_ms);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let name = format!("{}-{}-of-{}.snap", header.stage, header.worker, header.workers);
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let head = bincode::serialize(header).expect("a header serializes");
        let body = bincode::serialize(state).expect("a stage state serializes");
        let mut bytes = Vec::with_capacity(24 + head.len() + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(head.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&body);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(bytes.len() as u64)
    }

    /// Reads and checks one file.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if it cannot be read; [`SnapshotError::Corrupt`] if it is not a
    /// whole, valid snapshot.
    pub fn read(path: &Path) -> Result<(SnapshotHeader, StageState), SnapshotError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(corrupt("no snapshot magic"));
        }
        let (data, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(corrupt("checksum mismatch"));
        }
        let h = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
        let head = data.get(12..12 + h).ok_or_else(|| corrupt("truncated header"))?;
        let header: SnapshotHeader = bincode::deserialize(head).map_err(|e| corrupt(&format!("header: {e}")))?;
        let p = data
            .get(12 + h..20 + h)
            .ok_or_else(|| corrupt("truncated payload length"))?;
        let p = u64::from_le_bytes(p.try_into().expect("8 bytes")) as usize;
        let body = data
            .get(20 + h..)
            .filter(|b| b.len() == p)
            .ok_or_else(|| corrupt("payload length mismatch"))?;
        let state: StageState = bincode::deserialize(body).map_err(|e| corrupt(&format!("state: {e}")))?;
        Ok((header, state))
    }

    /// The cuts present (complete or not), newest first.
    pub fn cuts(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut cuts: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("cut-")?.parse().ok())
            .collect();
        cuts.sort_unstable_by(|a, b| b.cmp(a));
        cuts
    }

    /// Every snapshot file present (by name; not read).
    fn files(&self) -> Vec<FileName> {
        let mut out = Vec::new();
        for cut in self.cuts() {
            let Ok(entries) = std::fs::read_dir(self.cut_dir(cut)) else {
                continue;
            };
            out.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| FileName::parse(cut, e.file_name().to_str()?)),
            );
        }
        out
    }

    /// Reads file `f` and checks that it is what its name says, of definition `expected`.
    fn load_file(&self, f: &FileName, expected: &str) -> Result<RestoredPart, SnapshotError> {
        let path = self.cut_dir(f.cut_ms).join(f.name());
        let (h, state) = Self::read(&path)?;
        let wrong = |reason: String| SnapshotError::Corrupt {
            path: path.clone(),
            reason,
        };
        if (h.cut_ms, &h.stage, h.worker, h.workers) != (f.cut_ms, &f.stage, f.worker, f.workers) {
            return Err(wrong(format!(
                "its header says cut {} stage {} worker {} of {}",
                h.cut_ms, h.stage, h.worker, h.workers
            )));
        }
        if h.definition != expected {
            return Err(wrong(format!(
                "written for other feature definitions ({}; now {expected})",
                h.definition
            )));
        }
        Ok(RestoredPart {
            cut_ms: h.cut_ms,
            state,
        })
    }

    /// The newest usable snapshot with every cut at or before `max_cut_ms`: for each stage of
    /// `expected` (stage name -> definition, [`crate::keyed::stage_definitions`]) and each
    /// worker of one run's worker count, the newest file that checks out (magic, lengths,
    /// checksum, header, definition). The worker count of the newest files is tried first, then
    /// the others. Each file skipped is logged with the reason; `None` if some stage's worker
    /// has no usable file (its entities' state is then unknown).
    pub fn load_latest(&self, max_cut_ms: u64, expected: &BTreeMap<String, String>) -> Option<Restored> {
        let mut files: Vec<FileName> = self.files().into_iter().filter(|f| f.cut_ms <= max_cut_ms).collect();
        // Newest first.
        files.sort_unstable_by(|a, b| b.cmp(a));
        let mut counts: Vec<u32> = Vec::new();
        for f in &files {
            if !counts.contains(&f.workers) {
                counts.push(f.workers);
            }
        }
        'runs: for workers in counts {
            let mut restored = Restored {
                cut_ms: u64::MAX,
                ..Default::default()
            };
            for (stage, definition) in expected {
                let mut parts = Vec::with_capacity(workers as usize);
                for worker in 0..workers {
                    let found = files
                        .iter()
                        .filter(|f| f.workers == workers && f.worker == worker && &f.stage == stage)
                        .find_map(|f| match self.load_file(f, definition) {
                            Ok(part) => Some(part),
                            Err(e) => {
                                tracing::warn!(cut_ms = f.cut_ms, error = %e, "skipping a snapshot file that cannot be used");
                                None
                            }
                        });
                    let Some(part) = found else {
                        tracing::warn!(stage = %stage, worker, workers, "no usable snapshot file for this stage and worker");
                        continue 'runs;
                    };
                    restored.cut_ms = restored.cut_ms.min(part.cut_ms);
                    restored.max_cut_ms = restored.max_cut_ms.max(part.cut_ms);
                    parts.push(part);
                }
                restored.stages.insert(stage.clone(), RestoredStage { workers, parts });
            }
            if restored.stages.is_empty() {
                continue;
            }
            return Some(restored);
        }
        None
    }

    /// Deletes this worker's files of stage `stage` but the newest `keep` at or before
    /// `newest_cut_ms - retain_ms` (and every newer one), and cut directories left empty.
    /// `retain_ms` is how far behind the newest cut a restart may need one (its margin).
    pub fn prune(&self, stage: &str, worker: u32, workers: u32, keep: usize, retain_ms: u64) {
        let mut mine: Vec<FileName> = self
            .files()
            .into_iter()
            .filter(|f| f.stage == stage && f.worker == worker && f.workers == workers)
            .collect();
        mine.sort_unstable_by_key(|f| std::cmp::Reverse(f.cut_ms));
        let Some(newest) = mine.first().map(|f| f.cut_ms) else {
            return;
        };
        let old_enough = newest.saturating_sub(retain_ms);
        for f in mine.iter().filter(|f| f.cut_ms <= old_enough).skip(keep.max(1)) {
            let dir = self.cut_dir(f.cut_ms);
            let _ = std::fs::remove_file(dir.join(f.name()));
            // Fails while other files are still there.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl SnapshotSettings {
    /// Records a write in the counters.
    pub(crate) fn record(&self, result: &Result<u64, SnapshotError>, cut_ms: u64) {
        match result {
            Ok(bytes) => {
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(*bytes, Ordering::Relaxed);
                self.stats.last_cut_ms.fetch_max(cut_ms, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, cut_ms, "snapshot not written (a restart replays from an older one)");
            }
        }
    }
}
