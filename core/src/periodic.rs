//! A background thread that runs a task at a fixed interval until it is dropped: the metrics
//! publisher of a topology, the consumer-lag monitor, the topology-file reloader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a sleeping [`Periodic`] thread may take to notice that it was dropped.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// A named thread calling `tick` every `interval` (first after one interval); dropping it stops
/// the thread (within 20 ms, or once a running `tick` returns) and waits for it.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use weir_core::periodic::Periodic;
///
/// let ticks = Arc::new(AtomicUsize::new(0));
/// let t = ticks.clone();
/// let p = Periodic::spawn("counter", Duration::from_millis(5), move || {
///     t.fetch_add(1, Ordering::Relaxed);
/// });
/// std::thread::sleep(Duration::from_millis(100));
/// drop(p);
/// let n = ticks.load(Ordering::Relaxed);
/// assert!(n >= 1);
/// std::thread::sleep(Duration::from_millis(50));
/// assert_eq!(ticks.load(Ordering::Relaxed), n, "stopped on drop");
/// ```
pub struct Periodic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Starts the thread `name`.
    ///
    /// # Panics
    /// If the operating system cannot create a thread.
    pub fn spawn(name: &str, interval: Duration, mut tick: impl FnMut() + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || loop {
                let mut slept = Duration::ZERO;
                while slept < interval {
                    if s.load(Ordering::Acquire) {
                        return;
                    }
                    let step = (interval - slept).min(STOP_CHECK);
                    std::thread::sleep(step);
                    slept += step;
                }
                if s.load(Ordering::Acquire) {
                    return;
                }
                tick();
            })
            .expect("spawn a periodic thread");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
