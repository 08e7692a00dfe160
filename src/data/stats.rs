//! Dataset statistics for `stats.json`: counts per split, label distributions, and
//! percentiles of conversation and utterance lengths, kept in bounded memory (histograms).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::{Conversation, Split};

/// Exact percentiles over a histogram of small integers (dense counts by value).
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum: u64,
}

impl Histogram {
    pub fn add(&mut self, value: u64) {
        let i = value as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.n += 1;
        self.sum += value;
    }

    /// The nearest-rank percentile `p` (0..=100); `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let rank = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (value, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank && count > 0 {
                return Some(value as u64);
            }
        }
        None
    }

    pub fn summary(&self) -> Value {
        if self.n == 0 {
            return json!({"count": 0});
        }
        json!({
            "count": self.n,
            "mean": (self.sum as f64 / self.n as f64 * 100.0).round() / 100.0,
            "min": self.counts.iter().position(|&c| c > 0),
            "p50": self.percentile(50.0),
            "p90": self.percentile(90.0),
            "p95": self.percentile(95.0),
            "p99": self.percentile(99.0),
            "max": self.counts.iter().rposition(|&c| c > 0),
        })
    }
}

/// Accumulates `stats.json` one conversation at a time.
#[derive(Debug, Default)]
pub struct Stats {
    conversations: BTreeMap<Split, u64>,
    utterances: BTreeMap<Split, u64>,
    status: BTreeMap<Split, Counts>,
    satisfaction: BTreeMap<Split, Counts>,
    speaker: BTreeMap<Split, Counts>,
    emotion: BTreeMap<Split, Counts>,
    utterances_per_conversation: Histogram,
    utterance_chars: Histogram,
    utterance_words: Histogram,
    pub rejected: u64,
}

impl Stats {
    pub fn add(&mut self, c: &Conversation) {
        *self.conversations.entry(c.split).or_default() += 1;
        *self.utterances.entry(c.split).or_default() += c.utterances.len() as u64;
        if let Some(s) = c.status {
            self.status.entry(c.split).or_default().add(s);
        }
        if let Some(s) = c.satisfaction {
            self.satisfaction.entry(c.split).or_default().add(s);
        }
        self.utterances_per_conversation.add(c.utterances.len() as u64);
        let speaker = self.speaker.entry(c.split).or_default();
        for u in &c.utterances {
            speaker.add(u.speaker);
        }
        let emotion = self.emotion.entry(c.split).or_default();
        for u in &c.utterances {
            emotion.add(u.label);
            self.utterance_chars.add(u.text.chars().count() as u64);
            self.utterance_words.add(u.text.split_ascii_whitespace().count() as u64);
        }
    }

    /// Conversations counted so far.
    pub fn total(&self) -> u64 {
        self.conversations.values().sum()
    }

    pub fn to_json(&self) -> Value {
        fn by_split<T: Serialize>(m: &BTreeMap<Split, T>) -> Value {
            Value::Object(m.iter().map(|(s, v)| (s.as_str().to_string(), json!(v))).collect())
        }
        fn dist(m: &BTreeMap<Split, Counts>) -> Value {
            Value::Object(m.iter().map(|(s, d)| (s.as_str().to_string(), d.to_json())).collect())
        }
        json!({
            "conversations": by_split(&self.conversations),
            "total_conversations": self.total(),
            "utterances": by_split(&self.utterances),
            "rejected": self.rejected,
            "status": dist(&self.status),
            "satisfaction": dist(&self.satisfaction),
            "speaker": dist(&self.speaker),
            "emotion": dist(&self.emotion),
            "utterances_per_conversation": self.utterances_per_conversation.summary(),
            "utterance_chars": self.utterance_chars.summary(),
            "utterance_words": self.utterance_words.summary(),
        })
    }
}

/// Counts of small labels (0..=255), dense.
#[derive(Debug, Clone)]
struct Counts([u64; 256]);

impl Default for Counts {
    fn default() -> Self {
        Counts([0; 256])
    }
}

impl Counts {
    fn add(&mut self, label: u8) {
        self.0[label as usize] += 1;
    }

    /// `{"label": count}` for the labels seen.
    fn to_json(&self) -> Value {
        Value::Object(
            self.0.iter().enumerate().filter(|(_, &n)| n > 0).map(|(k, &n)| (k.to_string(), json!(n))).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.add(v);
        }
        assert_eq!(h.percentile(50.0), Some(50));
        assert_eq!(h.percentile(99.0), Some(99));
        assert_eq!(h.percentile(100.0), Some(100));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(Histogram::default().percentile(50.0), None);
    }
}
