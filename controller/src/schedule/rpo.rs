//! A host's RPO state: how old its newest good archive is against the RPO it must meet.

use std::time::Duration;

/// `ok`, `at-risk` (less than a quarter of the RPO left), `breached` (older than the RPO).
/// Ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RpoState {
    Ok,
    AtRisk,
    Breached,
}

impl RpoState {
    /// The state of a host whose protection gap (the age of its newest good archive, or how long it
    /// has been scheduled without one) is `age`.
    pub fn of(age: Duration, rpo: Duration) -> RpoState {
        if age > rpo {
            RpoState::Breached
        } else if (rpo - age) * 4 < rpo {
            RpoState::AtRisk
        } else {
            RpoState::Ok
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RpoState::Ok => "ok",
            RpoState::AtRisk => "at-risk",
            RpoState::Breached => "breached",
        }
    }

    pub fn from_name(name: &str) -> Option<RpoState> {
        [RpoState::Ok, RpoState::AtRisk, RpoState::Breached]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_rpo_left_is_at_risk() {
        let rpo = Duration::from_secs(120);
        assert_eq!(RpoState::of(Duration::from_secs(89), rpo), RpoState::Ok);
        assert_eq!(RpoState::of(Duration::from_secs(90), rpo), RpoState::Ok);
        assert_eq!(RpoState::of(Duration::from_secs(91), rpo), RpoState::AtRisk);
        assert_eq!(
            RpoState::of(Duration::from_secs(120), rpo),
            RpoState::AtRisk
        );
        assert_eq!(
            RpoState::of(Duration::from_secs(121), rpo),
            RpoState::Breached
        );
    }
}
