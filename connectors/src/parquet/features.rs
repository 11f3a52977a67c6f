//! A Parquet writer for training sets: one row per event, its point-in-time features and its
//! (final) label.
//!
//! Schema: `<id>: Int64 or Utf8` (as it came), `event_time: Timestamp(ms, UTC)`, one `UInt64`
//! column per entity key (named by the entity: an integer entity's key is its value),
//! `<feature columns>: Float64` (model order), `<label>: Int8` (-1 where no label arrived).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, Int8Array, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{ConnectorError, IdColumn};

/// One training row.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRow {
    /// The event's id.
    pub id: weir_core::EventId,
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: i64,
    /// Entity keys, in the writer's key column order.
    pub keys: Vec<u64>,
    /// Feature values, in the writer's column order.
    pub features: Vec<f64>,
    /// The final label: 1, 0, or -1 (unknown).
    pub label: i8,
}

/// Writes [`TrainingRow`]s to one Parquet file, buffering `batch_rows` rows per record batch.
pub struct TrainingSetWriter {
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    string_ids: bool,
    n_keys: usize,
    buffer: Vec<TrainingRow>,
    batch_rows: usize,
    path: PathBuf,
    rows: usize,
}

fn err(path: &Path, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::File {
        context: format!("write training set `{}`", path.display()),
        detail: e.to_string(),
    }
}

impl TrainingSetWriter {
    /// Creates `path` with the id column `id`, the entity key columns `key_names`, columns for
    /// `feature_names` and the label column `label_name`.
    ///
    /// # Errors
    /// [`ConnectorError::File`] if the file cannot be created.
    pub fn create(
        path: &Path,
        id: &IdColumn,
        key_names: &[String],
        feature_names: &[String],
        label_name: &str,
    ) -> Result<Self, ConnectorError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
        }
        let id_type = if id.string { DataType::Utf8 } else { DataType::Int64 };
        let mut fields = vec![
            Field::new(&id.name, id_type, false),
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ];
        fields.extend(key_names.iter().map(|n| Field::new(n, DataType::UInt64, false)));
        fields.extend(feature_names.iter().map(|n| Field::new(n, DataType::Float64, false)));
        fields.push(Field::new(label_name, DataType::Int8, false));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let file = File::create(path).map_err(|e| err(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| err(path, e))?;
        Ok(Self {
            writer,
            schema,
            string_ids: id.string,
            n_keys: key_names.len(),
            buffer: Vec::new(),
            batch_rows: 65_536,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    /// Adds a row.
    ///
    /// # Errors
    /// [`ConnectorError::File`] on an encoding or I/O error.
    pub fn write(&mut self, row: TrainingRow) -> Result<(), ConnectorError> {
        self.buffer.push(row);
        if self.buffer.len() >= self.batch_rows {
            self.flush_buffer()?;
        }
        Ok(())
    }

    fn flush_buffer(&mut self) -> Result<(), ConnectorError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.buffer);
        let n_features = self.schema.fields().len() - 3 - self.n_keys;
        let id: ArrayRef = if self.string_ids {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.id.to_string())))
        } else {
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.id.as_int().unwrap_or_default()),
            ))
        };
        let mut columns: Vec<ArrayRef> = vec![
            id,
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.event_time_ms)).with_timezone("UTC"),
            ),
        ];
        for k in 0..self.n_keys {
            columns.push(Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.keys[k]))));
        }
        for i in 0..n_features {
            columns.push(Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.features[i]),
            )));
        }
        columns.push(Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.label))));
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| err(&self.path, e))?;
        self.writer.write(&batch).map_err(|e| err(&self.path, e))?;
        self.rows += rows.len();
        Ok(())
    }

    /// Writes what is buffered and the file footer; returns the number of rows.
    ///
    /// # Errors
    /// [`ConnectorError::File`] on an encoding or I/O error.
    pub fn close(mut self) -> Result<usize, ConnectorError> {
        self.flush_buffer()?;
        self.writer.close().map_err(|e| err(&self.path, e))?;
        Ok(self.rows)
    }
}
