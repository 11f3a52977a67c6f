//! The adaptive micro-batch window (`[batching] max_wait = "auto"`): a controller that sets
//! `max_wait` and `max_batch_rows` from what the topology measures, to run the largest batches
//! that keep the read-to-acknowledgement p99 under `p99_target`.
//!
//! **Rule** (additive increase, multiplicative decrease, as Clipper's adaptive batching,
//! Crankshaw et al., NSDI 2017, §4.3; TensorFlow Serving's batch scheduler tunes the same two
//! knobs). Every tick (250 ms in a topology) the controller gets the p99 of the events
//! acknowledged during the tick, the arrival rate and whether the sources were held back:
//! - p99 over the target: `max_wait` halves (at least `min_wait`);
//! - p99 under 80% of the target: `max_wait` grows by 1/40 of the target (at most the target);
//! - in between: nothing changes (the dead band keeps it from oscillating);
//! - `max_batch_rows` follows `max_wait`: twice what one worker receives in `max_wait` at the
//!   measured rate (so batches flush on time, not on size, unless the rate jumps), between
//!   `min_rows` and `max_rows`;
//! - **overload**: sources held back by backpressure (inference cannot keep up) with the batch
//!   already at `max_rows`. Smaller batches would only make it worse: the window goes to the
//!   largest (`max_rows`, the target as `max_wait`), [`Decision::overloaded`] says so (a gauge
//!   and a warning), and backpressure bounds memory as with a fixed window. It ends after two
//!   ticks without pressure (hysteresis).
//! - a tick with no acknowledged event keeps the window.
//!
//! The controller holds no clock: [`AdaptiveWindow::decide`] is a function of its state and the
//! observation, so tests drive it with a simulated one.
//!
//! ```
//! use std::time::Duration;
//! use weir_operators::adaptive::{AdaptiveWindow, Observation};
//! let mut c = AdaptiveWindow::new(Duration::from_millis(20), 16, 4096, 2);
//! let start = c.window().max_wait;
//! let over = Observation { p99_us: Some(30_000), events_per_s: 10_000.0, backpressure: false };
//! assert!(c.decide(&over).window.max_wait < start, "over the target: shorter");
//! let under = Observation { p99_us: Some(5_000), ..over };
//! let before = c.window().max_wait;
//! assert!(c.decide(&under).window.max_wait > before, "well under: longer");
//! ```

use std::time::Duration;

use crate::micro_batch::BatchWindow;

/// What the topology measured during one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// p99 of read-to-acknowledgement of the events acknowledged in the tick, µs (`None`: none).
    pub p99_us: Option<u64>,
    /// Events read per second during the tick (all workers).
    pub events_per_s: f64,
    /// Whether the sources were held back by backpressure during the tick.
    pub backpressure: bool,
}

/// What the controller chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The window to use from now on.
    pub window: BatchWindow,
    /// Even the largest batches cannot keep up (see the module doc).
    pub overloaded: bool,
    /// Why: `over`, `under`, `hold`, `idle`, `overload`.
    pub reason: &'static str,
}

/// The controller (see the module doc).
#[derive(Debug, Clone)]
pub struct AdaptiveWindow {
    target: Duration,
    min_wait: Duration,
    min_rows: usize,
    max_rows: usize,
    workers: usize,
    window: BatchWindow,
    overloaded: bool,
    calm_ticks: u32,
}

impl AdaptiveWindow {
    /// A controller for `p99_target`, batches of `min_rows..=max_rows` rows, over `workers`
    /// micro-batchers (timely workers). It starts at a quarter of the target as `max_wait` and
    /// a quarter of `max_rows`.
    pub fn new(p99_target: Duration, min_rows: usize, max_rows: usize, workers: usize) -> Self {
        let max_rows = max_rows.max(1);
        let min_rows = min_rows.clamp(1, max_rows);
        Self {
            target: p99_target,
            min_wait: Duration::from_micros(200),
            min_rows,
            max_rows,
            workers: workers.max(1),
            window: BatchWindow {
                max_batch_rows: (max_rows / 4).max(min_rows),
                max_wait: (p99_target / 4).max(Duration::from_micros(200)),
            },
            overloaded: false,
            calm_ticks: 0,
        }
    }

    /// The window now.
    pub fn window(&self) -> BatchWindow {
        self.window
    }

    /// The p99 target.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// Takes one tick's observation and returns the window to use (see the module doc).
    pub fn decide(&mut self, obs: &Observation) -> Decision {
        let at_max = self.window.max_batch_rows >= self.max_rows;
        if obs.backpressure && (at_max || self.overloaded) {
            self.overloaded = true;
            self.calm_ticks = 0;
            self.window = BatchWindow {
                max_batch_rows: self.max_rows,
                max_wait: self.target,
            };
            return self.decision("overload");
        }
        if self.overloaded {
            self.calm_ticks += 1;
            if self.calm_ticks < 2 {
                return self.decision("overload");
            }
            self.overloaded = false;
        }
        let Some(p99) = obs.p99_us else {
            return self.decision("idle");
        };
        let target_us = self.target.as_micros() as u64;
        let (wait, reason) = if p99 > target_us {
            ((self.window.max_wait / 2).max(self.min_wait), "over")
        } else if p99 < target_us / 10 * 8 {
            ((self.window.max_wait + self.target / 40).min(self.target), "under")
        } else {
            (self.window.max_wait, "hold")
        };
        // Twice what one worker receives within the wait: batches close on time.
        let per_worker = obs.events_per_s.max(0.0) / self.workers as f64;
        let rows = (per_worker * wait.as_secs_f64() * 2.0).ceil() as usize;
        // Backpressure below max rows: let batches grow at once (larger batches are cheaper).
        let rows = if obs.backpressure { self.max_rows } else { rows };
        self.window = BatchWindow {
            max_batch_rows: rows.clamp(self.min_rows, self.max_rows),
            max_wait: wait,
        };
        self.decision(reason)
    }

    fn decision(&self, reason: &'static str) -> Decision {
        Decision {
            window: self.window,
            overloaded: self.overloaded,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(20);

    fn obs(p99_ms: Option<f64>, rate: f64, backpressure: bool) -> Observation {
        Observation {
            p99_us: p99_ms.map(|m| (m * 1000.0) as u64),
            events_per_s: rate,
            backpressure,
        }
    }

    /// The direction of each change, tick by tick on a simulated clock: no wall clock involved.
    #[test]
    fn the_window_moves_against_the_latency_and_holds_in_the_dead_band() {
        let mut c = AdaptiveWindow::new(TARGET, 16, 4096, 2);
        assert_eq!(c.window().max_wait, Duration::from_millis(5));
        // Latency over the target: halves until it is under (here: a p99 that follows the wait).
        let mut waits = vec![c.window().max_wait];
        for _ in 0..3 {
            let d = c.decide(&obs(Some(25.0), 20_000.0, false));
            assert_eq!(d.reason, "over");
            waits.push(d.window.max_wait);
        }
        assert!(waits.windows(2).all(|w| w[1] < w[0]), "{waits:?}");
        assert!(
            c.window().max_wait >= Duration::from_micros(200),
            "never below the floor"
        );
        // Well under: grows step by step, never past the target.
        let mut last = c.window().max_wait;
        for _ in 0..100 {
            let d = c.decide(&obs(Some(8.0), 20_000.0, false));
            assert!(d.window.max_wait >= last && d.window.max_wait <= TARGET);
            last = d.window.max_wait;
        }
        assert_eq!(last, TARGET);
        // In the dead band (80-100% of the target): nothing changes.
        let before = c.window();
        for p in [16.5, 18.0, 19.9] {
            assert_eq!(c.decide(&obs(Some(p), 20_000.0, false)).window, before, "{p} ms");
        }
        // No acknowledged event: nothing changes.
        assert_eq!(c.decide(&obs(None, 0.0, false)).reason, "idle");
        assert_eq!(c.window(), before);
    }

    #[test]
    fn batch_rows_follow_the_rate_within_their_bounds() {
        let mut c = AdaptiveWindow::new(TARGET, 16, 1024, 2);
        let d = c.decide(&obs(Some(19.0), 20_000.0, false));
        // 10,000 events/s per worker in 5 ms, twice: 100 rows.
        assert_eq!(d.window.max_batch_rows, 100);
        let d = c.decide(&obs(Some(19.0), 2_000.0, false));
        assert_eq!(d.window.max_batch_rows, 16, "at least min_rows");
        let d = c.decide(&obs(Some(19.0), 10_000_000.0, false));
        assert_eq!(d.window.max_batch_rows, 1024, "at most max_rows");
    }

    #[test]
    fn overload_goes_to_the_largest_batch_says_so_and_does_not_oscillate() {
        let mut c = AdaptiveWindow::new(TARGET, 16, 1024, 2);
        // Backpressure below max rows: batches grow to the maximum first.
        let d = c.decide(&obs(Some(40.0), 500_000.0, true));
        assert_eq!(d.window.max_batch_rows, 1024);
        assert!(!d.overloaded);
        // Still held back at the maximum: overload, the largest window, whatever the p99.
        let d = c.decide(&obs(Some(90.0), 500_000.0, true));
        assert!(d.overloaded && d.reason == "overload");
        assert_eq!(
            d.window,
            BatchWindow {
                max_batch_rows: 1024,
                max_wait: TARGET
            }
        );
        // One calm tick is not enough to leave it (no flapping), two are.
        assert!(c.decide(&obs(Some(90.0), 500_000.0, false)).overloaded);
        let d = c.decide(&obs(Some(30.0), 100_000.0, false));
        assert!(!d.overloaded);
        assert_eq!(d.reason, "over", "then the latency rule again: shorter");
        assert!(d.window.max_wait < TARGET);
    }
}
