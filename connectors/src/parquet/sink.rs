//! A score sink writing Parquet files through Arrow.
//!
//! Files are written under a directory as `scores-<start ms>-<seq>.parquet`, each at most
//! `max_rows_per_file` rows, with row groups of `row_group_rows` rows, zstd-compressed. A file is
//! written as `*.parquet.inprogress` and renamed when complete, so readers never see a partial
//! file. Rows are acknowledged (and their offsets become committable) only when their file is
//! complete: a crash loses the in-progress file, whose events are then re-read.
//!
//! Schema: `<id>: Int64 or Utf8` (the id as it came, under its schema field's name; see
//! [`IdColumn`]), `event_time: Timestamp(ms, UTC), score: Float32, model_version: Utf8,
//! source_partition: Int32, source_offset: Int64`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use weir_core::{clock, DeliveryLedger, Metrics, RowMeta, ScoreSink, SinkError};

use crate::{ConnectorError, IdColumn};

/// The file-name prefix of a backfill job's score files, `scores-<job id>-`: every run of the
/// job writes `scores-<job id>-<start ms>-<seq>.parquet` ([`job_run_prefix`]).
pub fn job_prefix(job_id: &str) -> String {
    format!("scores-{job_id}-")
}

/// The prefix of one run of job `job_id` started at `start_ms` (for [`ParquetScoreSink::with_prefix`]).
pub fn job_run_prefix(job_id: &str, start_ms: i64) -> String {
    format!("{}{start_ms}", job_prefix(job_id))
}

/// The score files in `dir` whose names start with `prefix`: complete ones (`*.parquet`) and
/// the in-progress ones a crash left (`*.parquet.inprogress`, never acknowledged). A missing
/// directory holds none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreFiles {
    /// Complete files.
    pub complete: Vec<PathBuf>,
    /// In-progress files.
    pub in_progress: Vec<PathBuf>,
}

/// Lists `dir`'s score files starting with `prefix` (see [`ScoreFiles`]).
pub fn score_files(dir: &Path, prefix: &str) -> ScoreFiles {
    let mut out = ScoreFiles::default();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        if name.ends_with(".parquet.inprogress") {
            out.in_progress.push(entry.path());
        } else if name.ends_with(".parquet") {
            out.complete.push(entry.path());
        }
    }
    out.complete.sort();
    out.in_progress.sort();
    out
}

/// The Arrow schema of score files with ids `id`.
pub fn score_schema(id: &IdColumn) -> SchemaRef {
    let id_type = if id.string { DataType::Utf8 } else { DataType::Int64 };
    Arc::new(Schema::new(vec![
        Field::new(&id.name, id_type, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("score", DataType::Float32, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("source_partition", DataType::Int32, false),
        Field::new("source_offset", DataType::Int64, false),
    ]))
}

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    rows: usize,
    /// (lineage, read_at) of rows in this file, acknowledged on completion.
    pending: Vec<RowMeta>,
}

struct State {
    open: Option<OpenFile>,
    seq: u64,
    written: Vec<PathBuf>,
}

/// Writes scores to Parquet files in a directory.
pub struct ParquetScoreSink {
    dir: PathBuf,
    prefix: String,
    max_rows_per_file: usize,
    row_group_rows: usize,
    schema: SchemaRef,
    string_ids: bool,
    state: Mutex<State>,
    ledger: Arc<DeliveryLedger>,
    metrics: Arc<Metrics>,
}

fn io(sink: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Io {
        sink: format!("parquet:{}", sink.display()),
        detail: e.to_string(),
    }
}

impl ParquetScoreSink {
    /// A sink writing into `dir` (created if missing), ids as `id` says.
    ///
    /// # Errors
    /// [`ConnectorError::File`] if the directory cannot be created.
    pub fn new(
        dir: &Path,
        id: &IdColumn,
        max_rows_per_file: usize,
        row_group_rows: usize,
        ledger: Arc<DeliveryLedger>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectorError> {
        std::fs::create_dir_all(dir).map_err(|e| ConnectorError::File {
            context: format!("create parquet output directory `{}`", dir.display()),
            detail: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            prefix: format!("scores-{}", clock::wall_ms()),
            max_rows_per_file: max_rows_per_file.max(1),
            row_group_rows: row_group_rows.max(1),
            schema: score_schema(id),
            string_ids: id.string,
            state: Mutex::new(State {
                open: None,
                seq: 0,
                written: Vec::new(),
            }),
            ledger,
            metrics,
        })
    }

    /// Names files `<prefix>-<seq>.parquet` instead of `scores-<start ms>-<seq>.parquet` (a
    /// backfill uses `scores-<job id>-<attempt start ms>` so that a resumed job finds its files).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Files completed so far.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().unwrap().written.clone()
    }

    fn open_file(&self, state: &mut State) -> Result<(), SinkError> {
        let path = self.dir.join(format!("{}-{:05}.parquet", self.prefix, state.seq));
        state.seq += 1;
        let tmp = path.with_extension("parquet.inprogress");
        let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .build();
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props)).map_err(|e| io(&tmp, e))?;
        state.open = Some(OpenFile {
            writer,
            tmp,
            path,
            rows: 0,
            pending: Vec::new(),
        });
        Ok(())
    }

    fn finish_file(&self, state: &mut State) -> Result<(), SinkError> {
        let Some(f) = state.open.take() else { return Ok(()) };
        f.writer.close().map_err(|e| io(&f.tmp, e))?;
        std::fs::rename(&f.tmp, &f.path).map_err(|e| io(&f.path, e))?;
        for row in &f.pending {
            self.ledger.ack(row.lineage);
        }
        self.metrics
            .record_acked(f.pending.iter().map(|row| (row.read_at_us, Some(row.event_time_ms))));
        self.metrics.scores_out.inc_by(f.pending.len() as u64);
        tracing::info!(path = %f.path.display(), rows = f.rows, "parquet file complete");
        state.written.push(f.path);
        Ok(())
    }
}

/// The `(source_partition, source_offset)` of every row of a score file written by
/// [`ParquetScoreSink`].
///
/// # Errors
/// [`ConnectorError::File`] if the file cannot be read or lacks those columns.
pub fn score_file_lineages(path: &Path) -> Result<Vec<(i32, i64)>, ConnectorError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let err = |e: &dyn std::fmt::Display| ConnectorError::File {
        context: format!("read score file `{}`", path.display()),
        detail: e.to_string(),
    };
    let file = File::open(path).map_err(|e| err(&e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(&e))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["source_partition", "source_offset"]);
    let reader = builder.with_projection(mask).build().map_err(|e| err(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(&e))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| err(&format!("no column `{name}`")))
        };
        let parts = col("source_partition")?;
        let offsets = col("source_offset")?;
        let parts = parts
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| err(&"source_partition is not Int32"))?;
        let offsets = offsets
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| err(&"source_offset is not Int64"))?;
        out.extend(parts.values().iter().copied().zip(offsets.values().iter().copied()));
    }
    Ok(out)
}

impl ScoreSink for ParquetScoreSink {
    fn write(&self, rows: &[RowMeta], scores: &[f32], model_version: &str) -> Result<(), SinkError> {
        let mut state = self.state.lock().unwrap();
        let mut start = 0;
        while start < rows.len() {
            if state.open.is_none() {
                self.open_file(&mut state)?;
            }
            let f = state.open.as_mut().expect("opened above");
            let n = (self.max_rows_per_file - f.rows).min(rows.len() - start);
            let r = &rows[start..start + n];
            let columns: Vec<ArrayRef> = vec![
                if self.string_ids {
                    Arc::new(StringArray::from_iter_values(r.iter().map(|m| m.id.to_string())))
                } else {
                    Arc::new(Int64Array::from_iter_values(
                        r.iter().map(|m| m.id.as_int().unwrap_or_default()),
                    ))
                },
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(r.iter().map(|m| m.event_time_ms)).with_timezone("UTC"),
                ),
                Arc::new(Float32Array::from(scores[start..start + n].to_vec())),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(model_version, n))),
                Arc::new(Int32Array::from_iter_values(r.iter().map(|m| m.lineage.partition))),
                Arc::new(Int64Array::from_iter_values(r.iter().map(|m| m.lineage.offset))),
            ];
            let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| io(&f.tmp, e))?;
            f.writer.write(&batch).map_err(|e| io(&f.tmp, e))?;
            f.rows += n;
            f.pending.extend_from_slice(r);
            start += n;
            if f.rows >= self.max_rows_per_file {
                self.finish_file(&mut state)?;
            }
        }
        Ok(())
    }

    /// Completes the current file (so that its rows are acknowledged).
    fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
        let mut state = self.state.lock().unwrap();
        self.finish_file(&mut state)
    }

    fn describe(&self) -> String {
        format!("parquet:{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use weir_core::Lineage;

    #[test]
    fn writes_readable_files_and_acks_on_completion() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(DeliveryLedger::new());
        let metrics = Arc::new(Metrics::new("t"));
        let sink =
            ParquetScoreSink::new(dir.path(), &IdColumn::int("tx_id"), 250, 100, ledger.clone(), metrics).unwrap();
        let rows: Vec<RowMeta> = (0..600)
            .map(|i| RowMeta {
                lineage: Lineage {
                    partition: 1,
                    offset: i,
                },
                id: weir_core::EventId::Int(i),
                event_time_ms: 1000 + i,
                read_at_us: 0,
            })
            .collect();
        rows.iter().for_each(|r| ledger.register(r.lineage, 0));
        let scores: Vec<f32> = (0..600).map(|i| i as f32).collect();
        sink.write(&rows[..300], &scores[..300], "m1").unwrap();
        assert_eq!(
            ledger.committable(&[1]),
            vec![(1, 250)],
            "first file complete at 250 rows"
        );
        sink.write(&rows[300..], &scores[300..], "m1").unwrap();
        assert_eq!(ledger.committable(&[1]), vec![(1, 500)]);
        assert_eq!(
            ledger.unacked(&[1]),
            100,
            "rows of the in-progress file are not acknowledged"
        );
        sink.close().unwrap();
        assert_eq!(ledger.committable(&[1]), vec![(1, 600)]);
        let files = sink.files();
        assert_eq!(files.len(), 3);
        let mut total = 0;
        let mut ids = Vec::new();
        for f in &files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                total += b.num_rows();
                let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let sc = b.column(2).as_any().downcast_ref::<Float32Array>().unwrap();
                for i in 0..b.num_rows() {
                    assert_eq!(id.value(i) as f32, sc.value(i));
                    ids.push(id.value(i));
                }
            }
        }
        assert_eq!(total, 600);
        let lineages: Vec<(i32, i64)> = files.iter().flat_map(|f| score_file_lineages(f).unwrap()).collect();
        assert_eq!(lineages, (0..600).map(|o| (1, o)).collect::<Vec<_>>());
        ids.sort();
        assert_eq!(ids, (0..600).collect::<Vec<i64>>());
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with("inprogress")));
    }
}
