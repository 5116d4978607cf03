//! The restore lease, a dead-man switch: armed when a restore is staged and held until it commits or
//! rolls back. Every call about the restore renews it, and a running step holds it. If it lapses
//! while no step runs (the controller or the network died), the watchdog makes the host safe on its
//! own. An agent that restarts with an unfinished restore arms it again from the journal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::v1::Step;

#[derive(Debug)]
struct Inner {
    restore_id: Option<String>,
    expires: Option<Instant>,
    length: Duration,
    running: Option<Step>,
    last_seen: Instant,
    /// Whether the last step ended well (a failed step means the controller stopped driving).
    last_ok: bool,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            restore_id: None,
            expires: None,
            length: Duration::from_secs(60),
            running: None,
            last_seen: Instant::now(),
            last_ok: false,
        }
    }
}

/// Shared between the restore task layer and the watchdog.
#[derive(Debug, Clone, Default)]
pub struct Lease(Arc<Mutex<Inner>>);

/// A step in progress; dropping it (finished or cancelled) renews the lease from that moment.
pub struct StepGuard {
    lease: Lease,
    ok: bool,
}

/// What the lease knows about the restore's driver.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    pub running: Option<Step>,
    /// Since the controller was last heard from (or a step ended).
    pub idle: Duration,
    /// The controller is driving the restore: a step runs, or one just ended well.
    pub driven: bool,
    pub armed: bool,
}

/// After a step ends well, the controller sends the next within moments: until then the restore
/// still counts as driven.
const BETWEEN_STEPS: Duration = Duration::from_secs(3);

impl Lease {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms the lease for restore `id` with `length` from now.
    pub fn arm(&self, id: &str, length: Duration) {
        let mut inner = self.lock();
        inner.restore_id = Some(id.to_string());
        inner.length = length.max(Duration::from_secs(1));
        inner.expires = Some(Instant::now() + inner.length);
        inner.last_seen = Instant::now();
    }

    /// Marks `step` of restore `id` as running and renews the lease (with a new length if given).
    /// Refused with the running step while another runs: one step at a time, even for a resume
    /// sent while the previous attempt still works.
    pub fn step_begins(
        &self,
        id: &str,
        step: Step,
        length: Option<Duration>,
    ) -> Result<StepGuard, Step> {
        let mut inner = self.lock();
        if let Some(running) = inner.running {
            return Err(running);
        }
        if inner.restore_id.as_deref() != Some(id) {
            inner.restore_id = Some(id.to_string());
        }
        if let Some(length) = length {
            inner.length = length.max(Duration::from_secs(1));
        }
        inner.expires = Some(Instant::now() + inner.length);
        inner.running = Some(step);
        inner.last_seen = Instant::now();
        Ok(StepGuard {
            lease: self.clone(),
            ok: false,
        })
    }

    /// The restore ended (committed or rolled back): nothing left to watch.
    pub fn disarm(&self) {
        let mut inner = self.lock();
        inner.restore_id = None;
        inner.expires = None;
        inner.running = None;
    }

    pub fn activity(&self) -> Activity {
        let inner = self.lock();
        let idle = inner.last_seen.elapsed();
        Activity {
            running: inner.running,
            idle,
            driven: inner.running.is_some() || (inner.last_ok && idle < BETWEEN_STEPS),
            armed: inner.expires.is_some(),
        }
    }

    /// The restore whose lease just lapsed, if any; disarms it.
    pub fn take_lapsed(&self) -> Option<String> {
        let mut inner = self.lock();
        let lapsed = inner.running.is_none() && inner.expires.is_some_and(|e| Instant::now() > e);
        if !lapsed {
            return None;
        }
        inner.expires = None;
        inner.restore_id.take()
    }
}

impl StepGuard {
    /// The step ended well.
    pub fn succeeded(mut self) {
        self.ok = true;
    }
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        let mut inner = self.lease.lock();
        inner.running = None;
        inner.last_ok = self.ok;
        inner.last_seen = Instant::now();
        if inner.restore_id.is_some() && inner.expires.is_some() {
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
        assert_eq!(lease.take_lapsed(), None, "nothing armed");
        lease.arm("r1", Duration::from_secs(1));
        let running = lease.step_begins("r1", Step::Load, None).unwrap();
        assert!(lease.activity().driven);
        assert_eq!(
            lease.step_begins("r1", Step::Load, None).err(),
            Some(Step::Load),
            "one step at a time"
        );
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(lease.take_lapsed(), None, "a running step holds it");
        running.succeeded();
        assert_eq!(lease.take_lapsed(), None, "renewed when the step ended");
        assert!(lease.activity().driven, "just after a step that ended well");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(lease.take_lapsed().as_deref(), Some("r1"));
        assert_eq!(lease.take_lapsed(), None, "reported once");
    }

    #[test]
    fn a_failed_step_means_nobody_drives() {
        let lease = Lease::default();
        lease.arm("r1", Duration::from_secs(60));
        drop(lease.step_begins("r1", Step::Stop, None).unwrap());
        let activity = lease.activity();
        assert!(!activity.driven && activity.armed && activity.running.is_none());
    }
}
