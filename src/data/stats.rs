//! Dataset statistics for `stats.json`: counts per split, label distributions, and
//! percentiles of conversation and utterance lengths, kept in bounded memory (histograms).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::{Conversation, Split};

/// Exact percentiles over a histogram of small integers.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: BTreeMap<u64, u64>,
    n: u64,
    sum: u64,
}

impl Histogram {
    pub fn add(&mut self, value: u64) {
        *self.counts.entry(value).or_default() += 1;
        self.n += 1;
        self.sum += value;
    }

    /// The nearest-rank percentile `p` (0..=100); `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let rank = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&value, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(value);
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
            "min": self.counts.keys().next(),
            "p50": self.percentile(50.0),
            "p90": self.percentile(90.0),
            "p95": self.percentile(95.0),
            "p99": self.percentile(99.0),
            "max": self.counts.keys().next_back(),
        })
    }
}

/// Accumulates `stats.json` one conversation at a time.
#[derive(Debug, Default)]
pub struct Stats {
    conversations: BTreeMap<Split, u64>,
    utterances: BTreeMap<Split, u64>,
    status: BTreeMap<Split, BTreeMap<u8, u64>>,
    satisfaction: BTreeMap<Split, BTreeMap<u8, u64>>,
    speaker: BTreeMap<Split, BTreeMap<u8, u64>>,
    emotion: BTreeMap<Split, BTreeMap<u8, u64>>,
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
            *self.status.entry(c.split).or_default().entry(s).or_default() += 1;
        }
        if let Some(s) = c.satisfaction {
            *self.satisfaction.entry(c.split).or_default().entry(s).or_default() += 1;
        }
        self.utterances_per_conversation.add(c.utterances.len() as u64);
        for u in &c.utterances {
            *self.speaker.entry(c.split).or_default().entry(u.speaker).or_default() += 1;
            *self.emotion.entry(c.split).or_default().entry(u.label).or_default() += 1;
            self.utterance_chars.add(u.text.chars().count() as u64);
            self.utterance_words.add(u.text.split_whitespace().count() as u64);
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
        fn dist(m: &BTreeMap<Split, BTreeMap<u8, u64>>) -> Value {
            Value::Object(
                m.iter()
                    .map(|(s, d)| {
                        let d = d.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                        (s.as_str().to_string(), Value::Object(d))
                    })
                    .collect(),
            )
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
