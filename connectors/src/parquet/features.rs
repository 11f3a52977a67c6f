//! A Parquet writer for training sets: one row per transaction, its point-in-time features and
//! its (final) label.
//!
//! Schema: `tx_id: UInt64, event_time: Timestamp(ms, UTC), customer_id: UInt64,
//! terminal_id: UInt64, <feature columns>: Float64 (model order), tx_fraud: Int8` (-1 where no
//! label arrived).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int8Array, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::ConnectorError;

/// One training row.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRow {
    /// Transaction id.
    pub tx_id: u64,
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: i64,
    /// Customer (card).
    pub customer_id: u64,
    /// Terminal.
    pub terminal_id: u64,
    /// Feature values, in the writer's column order.
    pub features: Vec<f64>,
    /// 1 fraud, 0 genuine, -1 unknown.
    pub tx_fraud: i8,
}

/// Writes [`TrainingRow`]s to one Parquet file, buffering `batch_rows` rows per record batch.
pub struct TrainingSetWriter {
    writer: ArrowWriter<File>,
    schema: SchemaRef,
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
    /// Creates `path` with columns for `feature_names`.
    ///
    /// # Errors
    /// [`ConnectorError::File`] if the file cannot be created.
    pub fn create(path: &Path, feature_names: &[String]) -> Result<Self, ConnectorError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
        }
        let mut fields = vec![
            Field::new("tx_id", DataType::UInt64, false),
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("customer_id", DataType::UInt64, false),
            Field::new("terminal_id", DataType::UInt64, false),
        ];
        fields.extend(feature_names.iter().map(|n| Field::new(n, DataType::Float64, false)));
        fields.push(Field::new("tx_fraud", DataType::Int8, false));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let file = File::create(path).map_err(|e| err(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| err(path, e))?;
        Ok(Self {
            writer,
            schema,
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
        let n_features = self.schema.fields().len() - 5;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.tx_id))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.event_time_ms)).with_timezone("UTC"),
            ),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.customer_id))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.terminal_id))),
        ];
        for i in 0..n_features {
            columns.push(Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.features[i]),
            )));
        }
        columns.push(Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.tx_fraud))));
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
