//! Runs the adaptive micro-batch window (`[batching] max_wait = "auto"`,
//! [`weir_operators::adaptive`]) beside a topology: every [`TICK`] it observes the p99 of the
//! events acknowledged since the last tick, the arrival rate and backpressure, applies the
//! controller's window to the running micro-batchers, publishes it in the window gauges, logs
//! each change at debug level and warns when the topology is overloaded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_core::periodic::Periodic;
use weir_core::{FlowControl, Metrics};
use weir_operators::adaptive::{AdaptiveWindow, Observation};
use weir_operators::micro_batch::SharedWindow;

/// How often the controller decides.
pub const TICK: Duration = Duration::from_millis(250);

/// Starts the controller for `target` over `workers` micro-batchers whose window is `window`
/// (its `max_batch_rows` is the most the controller uses); stops when the returned thread is
/// dropped.
pub fn spawn(
    target: Duration,
    window: Arc<SharedWindow>,
    workers: usize,
    flow: Arc<FlowControl>,
    metrics: Arc<Metrics>,
) -> Periodic {
    let max_rows = window.get().max_batch_rows;
    let mut controller = AdaptiveWindow::new(target, 16.min(max_rows), max_rows, workers);
    window.set(controller.window());
    crate::reload::publish_window(&metrics, controller.window());
    metrics.window_adaptive.set(1);
    metrics.window_p99_target.set(target.as_secs_f64());
    tracing::info!(p99_target = ?target, max_batch_rows = max_rows, "adaptive micro-batch window");
    let mut last = (Instant::now(), metrics.events_in.get(), flow.paused_micros());
    Periodic::spawn("weir-adaptive-window", TICK, move || {
        let now = Instant::now();
        let (events, paused) = (metrics.events_in.get(), flow.paused_micros());
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let obs = Observation {
            p99_us: metrics.take_recent_latency_quantile_us(0.99),
            events_per_s: events.saturating_sub(last.1) as f64 / dt,
            backpressure: paused > last.2 || flow.should_pause(),
        };
        last = (now, events, paused);
        let was = window.get();
        let was_overloaded = metrics.window_overloaded.get() == 1;
        let d = controller.decide(&obs);
        if d.window != was {
            window.set(d.window);
            crate::reload::publish_window(&metrics, d.window);
            tracing::debug!(
                reason = d.reason,
                p99_us = ?obs.p99_us,
                events_per_s = obs.events_per_s as u64,
                backpressure = obs.backpressure,
                max_batch_rows = d.window.max_batch_rows,
                max_wait = ?d.window.max_wait,
                "adaptive window changed"
            );
        }
        if d.overloaded != was_overloaded {
            metrics.window_overloaded.set(d.overloaded as i64);
            if d.overloaded {
                tracing::warn!(
                    events_per_s = obs.events_per_s as u64,
                    max_batch_rows = d.window.max_batch_rows,
                    "overloaded: even the largest micro-batches cannot keep up; backpressure holds the sources (lag grows)"
                );
            } else {
                tracing::info!("no longer overloaded");
            }
        }
    })
}
