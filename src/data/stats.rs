//! Dataset statistics for `stats.json`: counts per split, label distributions, and
//! percentiles of conversation and utterance lengths, kept in bounded memory (histograms).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::{Conversation, Split};

/// Values below this are counted exactly; above, in buckets of 1/64 relative width.
const EXACT: u64 = 1024;
/// Buckets per power of two above [`EXACT`].
const SUB: u64 = 64;

/// Percentiles over a histogram in bounded memory: values below 1024 are counted exactly,
/// larger ones in buckets 1/64 of their magnitude wide (at most about 4,500 counters, whatever
/// the values). Count, mean, min and max are exact; a percentile above 1024 is the lower
/// bound of its bucket (within 1.6 %).
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum: u128,
    min: u64,
    max: u64,
}

/// The bucket of a value, and the smallest value of a bucket.
fn bucket(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let bits = 63 - u64::from(value.leading_zeros());
    let shift = bits - SUB.trailing_zeros() as u64;
    let top = (value >> shift) - SUB;
    (EXACT + (bits - EXACT.trailing_zeros() as u64) * SUB + top) as usize
}

fn lower_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let (octave, top) = ((index - EXACT) / SUB, (index - EXACT) % SUB);
    let bits = octave + EXACT.trailing_zeros() as u64;
    (SUB + top) << (bits - SUB.trailing_zeros() as u64)
}

impl Histogram {
    pub fn add(&mut self, value: u64) {
        let i = bucket(value);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.min = if self.n == 0 { value } else { self.min.min(value) };
        self.max = self.max.max(value);
        self.n += 1;
        self.sum += u128::from(value);
    }

    /// Counters held (bounded whatever the values).
    pub fn buckets(&self) -> usize {
        self.counts.len()
    }

    /// The nearest-rank percentile `p` (0..=100); `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.n as f64).ceil().clamp(1.0, self.n as f64) as u64;
        if rank == self.n {
            return Some(self.max);
        }
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank && count > 0 {
                return Some(lower_bound(index).clamp(self.min, self.max));
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
            "min": self.min,
            "p50": self.percentile(50.0),
            "p90": self.percentile(90.0),
            "p95": self.percentile(95.0),
            "p99": self.percentile(99.0),
            "max": self.max,
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

    #[test]
    fn huge_values_take_few_buckets_and_stay_close() {
        let mut h = Histogram::default();
        h.add(3);
        h.add(100_000_000);
        h.add(u64::MAX);
        assert!(h.buckets() <= 5000, "{} counters", h.buckets());
        assert_eq!((h.percentile(0.0), h.percentile(100.0)), (Some(3), Some(u64::MAX)), "min and max are exact");
        let p = h.percentile(50.0).unwrap();
        assert!(p <= 100_000_000 && p as f64 >= 100_000_000.0 * (1.0 - 1.0 / 64.0), "{p}");
        for v in [1023u64, 1024, 1025, 2047, 2048, 123_456_789] {
            let b = lower_bound(bucket(v));
            assert!(b <= v && (v - b) as f64 <= v as f64 / 64.0, "{v} -> {b}");
            assert_eq!(bucket(b), bucket(v));
        }
    }
}
