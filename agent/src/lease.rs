//! The restore lease, a dead-man switch: from the first `stop` or `publish` until commit, each step
//! renews it. If it lapses while no step runs (the controller or the network died), the watchdog puts
//! the host in a safe state on its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    restore_id: Option<String>,
    expires: Option<Instant>,
    length: Duration,
    running: usize,
}

/// Shared between the gRPC service and the watchdog.
#[derive(Debug, Clone, Default)]
pub struct Lease(Arc<Mutex<Inner>>);

/// A step in progress; dropping it (finished or cancelled) renews the lease from that moment.
pub struct StepGuard(Lease);

/// Steps from which on the host must not be left alone.
const ARMING: [&str; 2] = ["stop", "publish"];

impl Lease {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `step` of restore `id` as running; arms the lease at `stop`/`publish`.
    pub fn step_begins(&self, id: &str, step: &str, length: Duration) -> StepGuard {
        let mut inner = self.lock();
        let armed_for_this = inner.restore_id.as_deref() == Some(id);
        if armed_for_this || ARMING.contains(&step) {
            inner.restore_id = Some(id.to_string());
            inner.length = length.max(Duration::from_secs(1));
            inner.expires = Some(Instant::now() + inner.length);
        }
        inner.running += 1;
        StepGuard(self.clone())
    }

    /// The restore ended (committed or rolled back).
    pub fn disarm(&self) {
        let mut inner = self.lock();
        inner.restore_id = None;
        inner.expires = None;
    }

    /// The restore whose lease just lapsed, if any; disarms it.
    pub fn take_lapsed(&self) -> Option<String> {
        let mut inner = self.lock();
        let lapsed = inner.running == 0 && inner.expires.is_some_and(|e| Instant::now() > e);
        if !lapsed {
            return None;
        }
        inner.expires = None;
        inner.restore_id.take()
    }
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.running = inner.running.saturating_sub(1);
        if inner.restore_id.is_some() {
            inner.expires = Some(Instant::now() + inner.length);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapses_only_when_armed_idle_and_expired() {
        let lease = Lease::default();
        drop(lease.step_begins("r1", "verify", Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(lease.take_lapsed(), None, "not armed before stop");
        let running = lease.step_begins("r1", "stop", Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(lease.take_lapsed(), None, "a running step holds it");
        drop(running);
        assert_eq!(lease.take_lapsed(), None, "renewed when the step ended");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(lease.take_lapsed().as_deref(), Some("r1"));
        assert_eq!(lease.take_lapsed(), None, "reported once");
    }
}
