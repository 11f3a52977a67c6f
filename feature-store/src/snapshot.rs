//! Snapshots of the keyed window operator's state, so that a restart replays only what came
//! after the latest snapshot instead of the whole longest window.
//!
//! **Cut.** A snapshot at cut `c` (ms, event time) holds, for one stage on one worker, the state
//! after every row and label with processing time `< c` and none after. Cuts are multiples of
//! the snapshot interval, so every worker and both stages cut at the same times; a stage writes
//! one when its frontier passes a cut and at least an interval of wall-clock time has gone by
//! since its last one (during a catch-up, most cuts are skipped).
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
//! A snapshot is **complete** when every stage of every worker wrote its file for the cut (the
//! header says how many). [`SnapshotStore::load_latest`] takes the newest complete snapshot at
//! or before a given cut whose files all check out (magic, lengths, checksum, the same window
//! definitions); a corrupt, partial or foreign one is skipped, with a warning, for the one
//! before. Each worker keeps its newest [`SnapshotSettings::keep`] snapshots and deletes older
//! ones. The state is re-sharded on load (each worker keeps the entities the exchange routes to
//! it), so a restart may change the worker count.

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
    /// Snapshots each worker keeps (older ones are deleted), at least 1.
    pub keep: usize,
    /// Counters.
    pub stats: Arc<SnapshotStats>,
}

/// A loaded snapshot: the cut and every worker's state of every stage.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The cut, ms.
    pub cut_ms: u64,
    /// Stage name -> the states its workers wrote, with their definitions.
    pub stages: BTreeMap<String, Vec<(String, StageState)>>,
}

impl Restored {
    /// Entries in all logs of all stages.
    pub fn entries(&self) -> usize {
        self.stages.values().flatten().map(|(_, s)| s.entries()).sum()
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

    /// Loads the snapshot at `cut_ms` if it is complete, every file checks out and its stages
    /// have the `expected` definitions (stage name -> definition,
    /// [`crate::keyed::stage_definitions`]).
    ///
    /// # Errors
    /// Why it cannot be used: a missing file (incomplete), a corrupt one, files that disagree,
    /// other feature definitions.
    pub fn load(&self, cut_ms: u64, expected: &BTreeMap<String, String>) -> Result<Restored, SnapshotError> {
        let dir = self.cut_dir(cut_ms);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .collect();
        files.sort();
        let incomplete = |reason: String| SnapshotError::Corrupt {
            path: dir.clone(),
            reason,
        };
        let mut restored = Restored {
            cut_ms,
            ..Default::default()
        };
        let mut shape: Option<(u32, u32)> = None;
        for f in &files {
            let (h, state) = Self::read(f)?;
            if h.cut_ms != cut_ms {
                return Err(incomplete(format!("{} says cut {}", f.display(), h.cut_ms)));
            }
            if *shape.get_or_insert((h.workers, h.stages)) != (h.workers, h.stages) {
                return Err(incomplete("files of different runs".into()));
            }
            restored.stages.entry(h.stage).or_default().push((h.definition, state));
        }
        let Some((workers, stages)) = shape else {
            return Err(incomplete("no files".into()));
        };
        if files.len() != (workers * stages) as usize
            || restored.stages.len() != stages as usize
            || restored.stages.values().any(|v| v.len() != workers as usize)
        {
            return Err(incomplete(format!(
                "incomplete: {} of {} files ({workers} workers x {stages} stages)",
                files.len(),
                workers * stages
            )));
        }
        let same = restored.stages.len() == expected.len()
            && restored
                .stages
                .iter()
                .all(|(k, v)| v.iter().all(|(d, _)| Some(d) == expected.get(k)));
        if !same {
            let found: BTreeMap<&String, &String> = restored.stages.iter().map(|(k, v)| (k, &v[0].0)).collect();
            return Err(incomplete(format!(
                "written for other feature definitions ({found:?}; now {expected:?})"
            )));
        }
        Ok(restored)
    }

    /// The newest complete, valid snapshot with a cut at or before `max_cut_ms`, if any; each
    /// one skipped is logged with the reason.
    pub fn load_latest(&self, max_cut_ms: u64, expected: &BTreeMap<String, String>) -> Option<Restored> {
        for cut in self.cuts().into_iter().filter(|c| *c <= max_cut_ms) {
            match self.load(cut, expected) {
                Ok(r) => return Some(r),
                Err(e) => tracing::warn!(cut_ms = cut, error = %e, "skipping a snapshot that cannot be used"),
            }
        }
        None
    }

    /// Deletes this worker's files of stage `stage` in all but the newest `keep` cuts, and
    /// cut directories left empty.
    pub fn prune(&self, stage: &str, worker: u32, workers: u32, keep: usize) {
        let name = format!("{stage}-{worker}-of-{workers}.snap");
        for cut in self.cuts().into_iter().skip(keep.max(1)) {
            let dir = self.cut_dir(cut);
            let _ = std::fs::remove_file(dir.join(&name));
            // Fails while other workers' files are still there.
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
