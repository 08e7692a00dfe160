//! The conversation-level tasks of SPEC §2 and their label rules: status (4 classes, or the
//! binary `pc`, problematic conversation) without the aborted conversations, and
//! satisfaction (7 classes, or the 3 polarities).

use serde::{Deserialize, Serialize};

use super::Conversation;

/// The status task's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusTask {
    /// Label = status − 1: Solved, To be tested, Out of scope, No solution.
    Status,
    /// Problematic conversation: 0 for status 1 and 2, 1 for 3 and 4.
    Pc,
}

/// The satisfaction task's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SatisfactionTask {
    /// Label = satisfaction index (−3 … +3).
    Satis7,
    /// Polarity: negative, neutral, positive.
    Satis3,
}

/// One task a conversation classifier is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Status,
    Pc,
    Satis7,
    Satis3,
}

impl From<StatusTask> for Task {
    fn from(t: StatusTask) -> Task {
        match t {
            StatusTask::Status => Task::Status,
            StatusTask::Pc => Task::Pc,
        }
    }
}

impl From<SatisfactionTask> for Task {
    fn from(t: SatisfactionTask) -> Task {
        match t {
            SatisfactionTask::Satis7 => Task::Satis7,
            SatisfactionTask::Satis3 => Task::Satis3,
        }
    }
}

/// The original's deviations from the intended rules (SPEC's quirks), off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskQuirks {
    /// **quirk**: `satis3` counts index 4 (+1) as neutral, below as negative, above as positive.
    pub satis3_neutral_at_plus_one: bool,
    /// **quirk**: keep the aborted conversations in the status task (the original's filter
    /// compared the integer status with a string and removed nothing).
    pub keep_aborted: bool,
}

impl Task {
    /// The class names, by label.
    pub fn classes(self) -> &'static [&'static str] {
        match self {
            Task::Status => &["solved", "to be tested", "out of scope", "no solution"],
            Task::Pc => &["not problematic", "problematic"],
            Task::Satis7 => &["-3", "-2", "-1", "0", "+1", "+2", "+3"],
            Task::Satis3 => &["negative", "neutral", "positive"],
        }
    }

    /// The head this task trains: `status` or `satisfaction`.
    pub fn head(self) -> &'static str {
        match self {
            Task::Status | Task::Pc => "status",
            Task::Satis7 | Task::Satis3 => "satisfaction",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Status => "status",
            Task::Pc => "pc",
            Task::Satis7 => "satis7",
            Task::Satis3 => "satis3",
        }
    }

    /// The label of a conversation for this task in a model of `method` (`taft`, `dapt`, …):
    /// DAPT's fine-tuning (SPEC §5) removes the aborted conversations from every task,
    /// satisfaction included, unless `keep_aborted`; the other methods only from status.
    pub fn label_for(self, method: &str, c: &Conversation, quirks: TaskQuirks) -> Option<i64> {
        if method == "dapt" && !quirks.keep_aborted && c.status == Some(0) {
            return None;
        }
        self.label(c, quirks)
    }

    /// The label of a conversation for this task; `None` when the conversation has no label
    /// for it (unlabeled, or aborted for the status tasks).
    pub fn label(self, c: &Conversation, quirks: TaskQuirks) -> Option<i64> {
        match self {
            Task::Status | Task::Pc => {
                let s = i64::from(c.status?);
                if s == 0 {
                    // Aborted: out of the status task, unless the original's no-op filter is
                    // reproduced (then it joins "solved" / "not problematic", as a label of -1
                    // would not train).
                    if !quirks.keep_aborted {
                        return None;
                    }
                    return Some(0);
                }
                Some(match self {
                    Task::Status => s - 1,
                    _ => i64::from(s >= 3),
                })
            }
            Task::Satis7 => c.satisfaction.map(i64::from),
            Task::Satis3 => {
                let s = i64::from(c.satisfaction?);
                let neutral = if quirks.satis3_neutral_at_plus_one { 4 } else { 3 };
                Some((s - neutral).signum() + 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ConvId, Split};

    fn conv(status: Option<u8>, satisfaction: Option<u8>) -> Conversation {
        Conversation { id: ConvId::Int(1), split: Split::Train, status, satisfaction, utterances: vec![] }
    }

    #[test]
    fn label_rules_follow_spec_section_2() {
        let q = TaskQuirks::default();
        let labels = |t: Task| (0..=4).map(|s| t.label(&conv(Some(s), None), q)).collect::<Vec<_>>();
        assert_eq!(labels(Task::Status), [None, Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(labels(Task::Pc), [None, Some(0), Some(0), Some(1), Some(1)]);
        let sat = |t: Task, q| (0..=6).map(|s| t.label(&conv(None, Some(s)), q).unwrap()).collect::<Vec<_>>();
        assert_eq!(sat(Task::Satis7, q), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(sat(Task::Satis3, q), [0, 0, 0, 1, 2, 2, 2]);
        let quirk = TaskQuirks { satis3_neutral_at_plus_one: true, keep_aborted: true };
        assert_eq!(sat(Task::Satis3, quirk), [0, 0, 0, 0, 1, 2, 2]);
        assert_eq!(Task::Status.label(&conv(Some(0), None), quirk), Some(0));
        assert_eq!(Task::Satis3.label(&conv(Some(1), None), q), None, "unlabeled");
        for t in [Task::Status, Task::Pc, Task::Satis7, Task::Satis3] {
            let max = (0..=6).filter_map(|s| t.label(&conv(Some(s.min(4)), Some(s)), q)).max().unwrap();
            assert_eq!(max as usize + 1, t.classes().len(), "{t:?}");
        }
    }
}
