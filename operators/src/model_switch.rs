//! Hot swap of the model the inference threads score with.
//!
//! A [`ModelSwitch`] holds, per inference thread, the scorer it is to take next. Installing a new
//! model set (one validated session per thread, and its version) bumps a generation; each thread
//! checks it before every batch and takes its new session there, so a batch is scored whole by
//! one model and its records carry that model's version: no event is lost or scored twice by a
//! swap. The session a thread gives up is kept ([`ModelSwitch::retired_version`]): installing
//! that version again (a rollback) takes it back without loading anything.
//!
//! ```
//! use weir_operators::model_switch::ModelSwitch;
//! let switch = ModelSwitch::new(2, "v1");
//! assert_eq!(switch.version(), "v1");
//! assert_eq!(switch.retired_version(), None);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::inference::Scorer;

/// A scorer and the version of its model.
pub type Versioned = (Box<dyn Scorer>, String);

/// Replaceable model of a pool of inference threads (see the module doc).
pub struct ModelSwitch {
    generation: AtomicU64,
    /// Per thread: the scorer to take at the next batch.
    pending: Mutex<Vec<Option<Versioned>>>,
    /// Per thread: the scorer it gave up at the last swap.
    retired: Mutex<Vec<Option<Versioned>>>,
    version: Mutex<String>,
}

impl ModelSwitch {
    /// A switch for `threads` inference threads, scoring with `version` now.
    pub fn new(threads: usize, version: &str) -> Self {
        Self {
            generation: AtomicU64::new(0),
            pending: Mutex::new((0..threads).map(|_| None).collect()),
            retired: Mutex::new((0..threads).map(|_| None).collect()),
            version: Mutex::new(version.to_string()),
        }
    }

    /// Threads it serves.
    pub fn threads(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    /// The version installed last (what the threads score with from their next batch).
    pub fn version(&self) -> String {
        self.version.lock().unwrap().clone()
    }

    /// The version the threads gave up at the last swap, if every thread kept its session.
    pub fn retired_version(&self) -> Option<String> {
        let r = self.retired.lock().unwrap();
        let first = r.first()?.as_ref()?.1.clone();
        r.iter()
            .all(|s| s.as_ref().is_some_and(|(_, v)| *v == first))
            .then_some(first)
    }

    /// Installs `scorers` (one per thread, in thread order) with `version`: each thread scores
    /// with its own from its next batch.
    ///
    /// # Panics
    /// If `scorers` is not one per thread.
    pub fn install(&self, scorers: Vec<Box<dyn Scorer>>, version: &str) {
        let mut p = self.pending.lock().unwrap();
        assert_eq!(scorers.len(), p.len(), "one scorer per inference thread");
        for (slot, s) in p.iter_mut().zip(scorers) {
            *slot = Some((s, version.to_string()));
        }
        *self.version.lock().unwrap() = version.to_string();
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Installs the retired sessions again (a rollback without loading): `false` if they are
    /// not of `version`.
    pub fn reinstate(&self, version: &str) -> bool {
        if self.retired_version().as_deref() != Some(version) {
            return false;
        }
        let scorers: Vec<Box<dyn Scorer>> = self
            .retired
            .lock()
            .unwrap()
            .iter_mut()
            .map(|s| s.take().expect("checked above").0)
            .collect();
        self.install(scorers, version);
        true
    }

    /// Called by inference thread `thread` before each batch with the generation it last saw:
    /// swaps `current` for the pending scorer if there is one (keeping the old one as retired).
    pub fn refresh(&self, thread: usize, seen: &mut u64, current: &mut Versioned) {
        let now = self.generation.load(Ordering::Acquire);
        if now == *seen {
            return;
        }
        *seen = now;
        let next = self.pending.lock().unwrap()[thread].take();
        if let Some(next) = next {
            let old = std::mem::replace(current, next);
            self.retired.lock().unwrap()[thread] = Some(old);
            tracing::info!(thread, version = %current.1, previous = %self.retired.lock().unwrap()[thread].as_ref().map_or("", |o| o.1.as_str()), "inference thread switched model");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::InferenceError;
    use ndarray::ArrayView2;

    struct Fixed(f32);
    impl Scorer for Fixed {
        fn score(&mut self, x: ArrayView2<'_, f32>) -> Result<Vec<f32>, InferenceError> {
            Ok(vec![self.0; x.nrows()])
        }
    }

    fn score(s: &mut Versioned) -> f32 {
        s.0.score(ndarray::Array2::zeros((1, 1)).view()).unwrap()[0]
    }

    #[test]
    fn threads_switch_between_batches_and_a_rollback_takes_the_old_sessions_back() {
        let switch = ModelSwitch::new(2, "v1");
        let mut threads: Vec<(u64, Versioned)> = (0..2)
            .map(|_| (0, (Box::new(Fixed(1.0)) as Box<dyn Scorer>, "v1".to_string())))
            .collect();
        for (i, (seen, cur)) in threads.iter_mut().enumerate() {
            switch.refresh(i, seen, cur);
            assert_eq!(
                (score(cur), cur.1.as_str()),
                (1.0, "v1"),
                "nothing installed: unchanged"
            );
        }
        switch.install(vec![Box::new(Fixed(2.0)), Box::new(Fixed(2.0))], "v2");
        assert_eq!(switch.version(), "v2");
        // Thread 0 takes it at its next batch; thread 1 has not run a batch yet.
        let (seen, cur) = &mut threads[0];
        switch.refresh(0, seen, cur);
        assert_eq!((score(&mut threads[0].1), threads[0].1 .1.as_str()), (2.0, "v2"));
        assert_eq!(switch.retired_version(), None, "thread 1 still scores with v1");
        let (seen, cur) = &mut threads[1];
        switch.refresh(1, seen, cur);
        assert_eq!(switch.retired_version().as_deref(), Some("v1"));
        // Rollback: the retired sessions, not new ones.
        assert!(!switch.reinstate("v3"));
        assert!(switch.reinstate("v1"));
        for (i, (seen, cur)) in threads.iter_mut().enumerate() {
            switch.refresh(i, seen, cur);
            assert_eq!((score(cur), cur.1.as_str()), (1.0, "v1"));
        }
        assert_eq!(
            switch.retired_version().as_deref(),
            Some("v2"),
            "and v2 is kept in turn"
        );
    }
}
