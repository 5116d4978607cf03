//! Which archives a retention policy keeps: restic's meaning of keep-last/hourly/daily/weekly/
//! monthly/yearly (for each of the last N periods that have archives, the newest archive in it),
//! plus a minimum count never pruned, pins, and whatever the caller protects (a host's newest
//! verified archive, an archive a restore is using). Periods are calendar periods in UTC; weeks are
//! ISO weeks.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// The newest this many archives are never pruned, whatever the rest says.
    #[serde(default)]
    pub min_keep: u32,
}

/// The keys a policy has, as `ferry_retention_<key>` takes them.
pub const KEYS: [&str; 7] = [
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "min_keep",
];

impl Retention {
    /// A policy with no keep rule prunes nothing.
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| *n == 0)
    }

    fn rules(&self) -> [(Period, u32); 6] {
        [
            (Period::Last, self.keep_last),
            (Period::Hourly, self.keep_hourly),
            (Period::Daily, self.keep_daily),
            (Period::Weekly, self.keep_weekly),
            (Period::Monthly, self.keep_monthly),
            (Period::Yearly, self.keep_yearly),
        ]
    }

    /// Sets one key from an inventory var (`ferry_retention_<key>`).
    pub fn set(&mut self, key: &str, value: &Value) -> Result<(), String> {
        let n = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{value} is not a count (0 or more)"))?;
        let slot = match key {
            "keep_last" => &mut self.keep_last,
            "keep_hourly" => &mut self.keep_hourly,
            "keep_daily" => &mut self.keep_daily,
            "keep_weekly" => &mut self.keep_weekly,
            "keep_monthly" => &mut self.keep_monthly,
            "keep_yearly" => &mut self.keep_yearly,
            "min_keep" => &mut self.min_keep,
            other => {
                return Err(format!(
                    "unknown retention key {other:?} (known: {})",
                    KEYS.join(", ")
                ));
            }
        };
        *slot = n;
        Ok(())
    }

    /// The policy as one line: `keep_last 7, keep_daily 14, min_keep 3`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .rules()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| format!("{} {n}", p.key()))
            .collect();
        if self.min_keep > 0 {
            parts.push(format!("min_keep {}", self.min_keep));
        }
        if parts.is_empty() {
            "none (keeps everything)".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A calendar period: (year, ordinal day or ISO week or month, hour, 0).
type Bucket = (i32, u32, u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    fn key(self) -> &'static str {
        match self {
            Period::Last => "keep_last",
            Period::Hourly => "keep_hourly",
            Period::Daily => "keep_daily",
            Period::Weekly => "keep_weekly",
            Period::Monthly => "keep_monthly",
            Period::Yearly => "keep_yearly",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Period::Last => "last",
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// The period an archive falls in; `index` makes every archive its own "last" period.
    fn bucket(self, t: OffsetDateTime, index: usize) -> Bucket {
        let t = t.to_offset(time::UtcOffset::UTC);
        match self {
            Period::Last => (index as i32, 0, 0, 0),
            Period::Hourly => (t.year(), t.ordinal().into(), t.hour().into(), 0),
            Period::Daily => (t.year(), t.ordinal().into(), 0, 0),
            Period::Weekly => {
                let (year, week, _) = t.to_iso_week_date();
                (year, week.into(), 0, 0)
            }
            Period::Monthly => (t.year(), u8::from(t.month()).into(), 0, 0),
            Period::Yearly => (t.year(), 0, 0, 0),
        }
    }
}

/// One archive as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: i64,
    pub created_at: OffsetDateTime,
    pub pinned: bool,
    /// Why the caller forbids pruning it, if it does.
    pub protected: Vec<String>,
}

/// Keep or prune, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Decides every archive of one host, newest first. An empty policy keeps everything.
pub fn decide(policy: &Retention, archives: &[Candidate]) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = archives.iter().collect();
    sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    // Per rule: periods still to keep, and the period of the archive it kept last.
    let mut left: BTreeMap<&'static str, (u32, Option<Bucket>)> = policy
        .rules()
        .iter()
        .map(|(p, n)| (p.key(), (*n, None)))
        .collect();
    let empty = policy.is_empty();
    sorted
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let mut reasons = Vec::new();
            if empty {
                reasons.push("no retention policy".to_string());
            }
            for (period, _) in policy.rules() {
                let Some((count, last)) = left.get_mut(period.key()) else {
                    continue;
                };
                if *count == 0 {
                    continue;
                }
                let bucket = period.bucket(a.created_at, index);
                if *last != Some(bucket) {
                    *last = Some(bucket);
                    *count -= 1;
                    reasons.push(period.reason().to_string());
                }
            }
            if (index as u32) < policy.min_keep {
                reasons.push("min_keep".into());
            }
            if a.pinned {
                reasons.push("pinned".into());
            }
            reasons.extend(a.protected.iter().cloned());
            Decision {
                id: a.id,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(id: i64, days_ago: i64, hour: u8) -> Candidate {
        let base = time::macros::datetime!(2026-12-01 00:00 UTC);
        Candidate {
            id,
            created_at: base - time::Duration::days(days_ago) + time::Duration::hours(hour.into()),
            pinned: false,
            protected: Vec::new(),
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<i64> {
        let mut ids: Vec<i64> = decisions.iter().filter(|d| d.keep).map(|d| d.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day_with_archives() {
        // Two archives a day for four days (ids: day*10 + slot; the higher slot is newer).
        let archives: Vec<Candidate> = (0..4)
            .flat_map(|d| [archive(d * 10, d, 1), archive(d * 10 + 1, d, 13)])
            .collect();
        let policy = Retention {
            keep_daily: 3,
            ..Default::default()
        };
        assert_eq!(kept(&decide(&policy, &archives)), vec![1, 11, 21]);
    }

    #[test]
    fn rules_combine_and_a_gap_does_not_use_up_a_period() {
        // Days 0, 1, 5, 40, 400 ago.
        let archives = vec![
            archive(1, 0, 0),
            archive(2, 1, 0),
            archive(3, 5, 0),
            archive(4, 40, 0),
            archive(5, 400, 0),
        ];
        let policy = Retention {
            keep_last: 1,
            keep_daily: 2,
            keep_monthly: 3,
            ..Default::default()
        };
        let decisions = decide(&policy, &archives);
        assert_eq!(kept(&decisions), vec![1, 2, 4]);
        let first = &decisions[0];
        assert_eq!(first.reasons, vec!["last", "daily", "monthly"]);
    }

    #[test]
    fn min_keep_pins_and_protection_override_the_policy() {
        let mut archives: Vec<Candidate> = (0..6).map(|d| archive(d, d, 0)).collect();
        archives[4].pinned = true;
        archives[5].protected = vec!["newest verified".into()];
        let policy = Retention {
            keep_last: 1,
            min_keep: 3,
            ..Default::default()
        };
        let decisions = decide(&policy, &archives);
        assert_eq!(kept(&decisions), vec![0, 1, 2, 4, 5]);
        assert!(
            decisions
                .iter()
                .any(|d| d.id == 4 && d.reasons == ["pinned"])
        );
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        let archives: Vec<Candidate> = (0..3).map(|d| archive(d, d, 0)).collect();
        assert_eq!(
            kept(&decide(&Retention::default(), &archives)),
            vec![0, 1, 2]
        );
    }
}
