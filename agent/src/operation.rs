//! One operation per host at a time: the slot every mutating task must hold.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What is running on this host, as shown to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub kind: String,
    pub id: String,
    pub started_by: String,
    pub started_unix: i64,
}

/// The host's single operation slot.
#[derive(Debug, Clone, Default)]
pub struct OperationSlot {
    current: Arc<Mutex<Option<Running>>>,
}

/// Holding this means the slot is ours; dropping it frees the slot.
#[derive(Debug)]
pub struct OperationGuard {
    current: Arc<Mutex<Option<Running>>>,
}

impl OperationSlot {
    /// Takes the slot, or returns what already holds it.
    pub fn try_begin(
        &self,
        kind: &str,
        id: &str,
        started_by: &str,
    ) -> Result<OperationGuard, Running> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = current.as_ref() {
            return Err(running.clone());
        }
        *current = Some(Running {
            kind: kind.to_string(),
            id: id.to_string(),
            started_by: started_by.to_string(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default(),
        });
        Ok(OperationGuard {
            current: Arc::clone(&self.current),
        })
    }

    pub fn current(&self) -> Option<Running> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_operation_is_refused_with_the_running_one() {
        let slot = OperationSlot::default();
        let guard = slot.try_begin("backup", "op-1", "CN=alice").unwrap();
        let refused = slot.try_begin("restore", "op-2", "CN=bob").unwrap_err();
        assert_eq!(refused.kind, "backup");
        assert_eq!(refused.id, "op-1");
        drop(guard);
        assert!(slot.current().is_none());
        assert!(slot.try_begin("restore", "op-2", "CN=bob").is_ok());
    }
}
