//! The micro-batch operator: turns a stream of feature rows into micro-batches for inference.
//!
//! A batch is flushed when either
//! - `max_batch_rows` rows are buffered (cause `size`), or
//! - the oldest buffered row has waited `max_wait` (cause `time`); this is a timer
//!   (`activate_after`), not the next arrival, so a lone event is flushed after `max_wait`, or
//! - the input ended or shutdown was requested (cause `drain`).
//!
//! Flushed batches go to a bounded queue of `max_inflight_batches` read by the inference
//! threads. When the queue is full the operator keeps the batch, reports itself blocked through
//! [`FlowControl`], and retries; the source sees [`FlowControl::should_pause`] and pauses its
//! partitions. While blocked no further batch is formed, so a worker holds at most one full
//! batch plus the rows that arrived before its source paused.
//!
//! The operator produces no data; it holds its capability until its input is complete and every
//! row was handed off, so a probe on its output tells when the topology has drained.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use ndarray::Array2;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::progress::Timestamp;
use weir_core::metrics::FlushCause;
use weir_core::{FeatureRow, FlowControl, Metrics, RowMeta};

use crate::batch::Batch;

/// The micro-batch window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchWindow {
    /// Flush when this many rows are buffered. At least 1.
    pub max_batch_rows: usize,
    /// Flush when the oldest buffered row has waited this long.
    pub max_wait: Duration,
}

struct Buffer {
    n_features: usize,
    rows: Vec<RowMeta>,
    features: Vec<f32>,
    oldest: Option<Instant>,
}

impl Buffer {
    fn take(&mut self, cause: FlushCause, metrics: &Metrics) -> Batch {
        let n = self.rows.len();
        let rows = std::mem::take(&mut self.rows);
        let features = std::mem::take(&mut self.features);
        let waited = self.oldest.take().map(|t| t.elapsed()).unwrap_or_default();
        metrics.batches.with_label_values(&[cause.as_str()]).inc();
        metrics.batch_rows.observe(n as f64);
        metrics.batch_fill_wait.observe(waited.as_secs_f64());
        Batch {
            rows,
            features: Array2::from_shape_vec((n, self.n_features), features)
                .expect("every row has n_features values"),
            cause,
            flushed_at: Instant::now(),
        }
    }
}

/// Builds the micro-batch operator on `rows` (each with `n_features` features), sending batches
/// to `queue`. Rows whose feature count differs from `n_features` are a programming error of the
/// feature operator and panic.
///
/// Returns an empty stream to probe for completion.
pub fn micro_batch<'s, T: Timestamp>(
    rows: StreamVec<'s, T, FeatureRow>,
    window: BatchWindow,
    n_features: usize,
    queue: Sender<Batch>,
    flow: Arc<FlowControl>,
    metrics: Arc<Metrics>,
) -> StreamVec<'s, T, ()> {
    let scope = rows.scope();
    let max_rows = window.max_batch_rows.max(1);
    rows.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "MicroBatch", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        let mut cap = Some(cap);
        let mut buf = Buffer {
            n_features,
            rows: Vec::with_capacity(max_rows),
            features: Vec::with_capacity(max_rows * n_features),
            oldest: None,
        };
        let mut pending: Option<Batch> = None;
        let mut blocked = false;
        move |(input, frontier), _output| {
            let mut received = 0usize;
            input.for_each(|_cap, data| {
                for row in data.drain(..) {
                    assert_eq!(row.features.len(), n_features, "feature row width");
                    if buf.oldest.is_none() {
                        buf.oldest = Some(Instant::now());
                    }
                    buf.rows.push(row.meta);
                    buf.features.extend_from_slice(&row.features);
                    received += 1;
                    if pending.is_none() && buf.rows.len() >= max_rows {
                        pending = Some(buf.take(FlushCause::Size, &metrics));
                    }
                }
            });
            flow.add_buffered(received);

            let input_done = frontier.frontier().is_empty();
            let draining = input_done || flow.shutdown_requested();
            loop {
                // Hand off what is pending; stop at the first full queue.
                if let Some(batch) = pending.take() {
                    let n = batch.len();
                    metrics.inflight_batches.inc();
                    match queue.try_send(batch) {
                        Ok(()) => {
                            flow.remove_buffered(n);
                            if blocked {
                                blocked = false;
                                flow.set_blocked(false);
                            }
                        }
                        Err(TrySendError::Full(batch)) => {
                            metrics.inflight_batches.dec();
                            pending = Some(batch);
                            if !blocked {
                                blocked = true;
                                flow.set_blocked(true);
                            }
                            break;
                        }
                        Err(TrySendError::Disconnected(batch)) => {
                            // Inference has stopped (its threads failed): keep the rows, which
                            // stay unacknowledged and so uncommitted; the topology reports why.
                            metrics.inflight_batches.dec();
                            pending = Some(batch);
                            break;
                        }
                    }
                }
                if buf.rows.len() >= max_rows {
                    pending = Some(buf.take(FlushCause::Size, &metrics));
                } else if !buf.rows.is_empty()
                    && buf.oldest.is_some_and(|t| t.elapsed() >= window.max_wait)
                {
                    pending = Some(buf.take(FlushCause::Time, &metrics));
                } else if !buf.rows.is_empty() && draining {
                    pending = Some(buf.take(FlushCause::Drain, &metrics));
                } else {
                    break;
                }
            }

            if pending.is_some() {
                activator.activate_after(Duration::from_micros(200));
            } else if let Some(t) = buf.oldest {
                activator.activate_after(window.max_wait.saturating_sub(t.elapsed()));
            } else if input_done {
                cap = None;
            }
            let _ = &cap;
        }
    })
}
