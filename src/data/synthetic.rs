//! The seeded synthetic dataset that stands in for the confidential one (SPEC §1):
//! French-like sentences, 5–15 utterances, uniform labels; and a `learnable` variant whose
//! speaker role, status and satisfaction can be predicted from the words.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{ConvId, Conversation, Split, Utterance};
use crate::error::{Error, Result};

/// The most conversations one synthetic dataset holds.
const MAX_CONVERSATIONS: usize = 1_000_000_000;
/// The most utterances one synthetic conversation holds.
const MAX_UTTERANCES: usize = 10_000;

/// Settings of the generator; the defaults are the dummy dataset's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub unlabeled: usize,
    pub min_utterances: usize,
    pub max_utterances: usize,
    /// Put words in the text that reveal the speaker role, status and satisfaction.
    pub learnable: bool,
    /// How much the learnable signal is blurred, in [0, 1]: a status word belongs to a
    /// random status with this probability (shared vocabulary), a quarter as often the
    /// label is another than the words say (label noise) and a role marker is the other
    /// role's; the satisfaction word is missing, or a neighbouring level's, with this
    /// probability each (a weaker signal than the status's).
    pub noise: f64,
    /// The share of utterances that name the status (at least one per conversation does).
    pub status_share: f64,
    /// How many of the last utterances name the satisfaction (each word blurred by `noise`
    /// on its own).
    pub satisfaction_utterances: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 42,
            train: 1000,
            val: 250,
            test: 250,
            unlabeled: 4300,
            min_utterances: 5,
            max_utterances: 15,
            learnable: false,
            noise: 0.2,
            status_share: 0.4,
            satisfaction_utterances: 1,
        }
    }
}

impl SyntheticConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min_utterances == 0 || self.min_utterances > self.max_utterances {
            return Err(Error::config(format!(
                "synthetic: need 1 <= min_utterances <= max_utterances, got {}..{}",
                self.min_utterances, self.max_utterances
            )));
        }
        if !(0.0..=1.0).contains(&self.noise) {
            return Err(Error::config(format!("synthetic: noise {} must be in [0, 1]", self.noise)));
        }
        if !(0.0..=1.0).contains(&self.status_share) {
            return Err(Error::config(format!("synthetic: status_share {} must be in [0, 1]", self.status_share)));
        }
        if self.satisfaction_utterances == 0 || self.satisfaction_utterances > self.min_utterances {
            return Err(Error::config(format!(
                "synthetic: satisfaction_utterances {} must be in 1..=min_utterances ({})",
                self.satisfaction_utterances, self.min_utterances
            )));
        }
        if self.max_utterances > MAX_UTTERANCES {
            return Err(Error::config(format!("synthetic: max_utterances must be at most {MAX_UTTERANCES}")));
        }
        match self.sizes().into_iter().try_fold(0usize, |a, b| a.checked_add(b)) {
            Some(0) => Err(Error::config("synthetic: all split sizes are 0")),
            Some(n) if n <= MAX_CONVERSATIONS => Ok(()),
            _ => Err(Error::config(format!(
                "synthetic: the split sizes add up to more than {MAX_CONVERSATIONS} conversations"
            ))),
        }
    }

    fn sizes(&self) -> [usize; 4] {
        [self.train, self.val, self.test, self.unlabeled]
    }

    /// Conversations in all splits (call [`SyntheticConfig::validate`] first).
    pub fn total(&self) -> usize {
        self.sizes().iter().sum()
    }

    /// Multiplies every split size by `factor`; sizes that overflow are a config error.
    pub fn scaled(mut self, factor: usize) -> Result<Self> {
        let scale = |n: usize| {
            n.checked_mul(factor)
                .ok_or_else(|| Error::config(format!("synthetic: {n} × {factor} conversations overflow")))
        };
        self.train = scale(self.train)?;
        self.val = scale(self.val)?;
        self.test = scale(self.test)?;
        self.unlabeled = scale(self.unlabeled)?;
        Ok(self)
    }

    /// The conversations, in split order (train, val, test, unlabeled), ids 0..total.
    pub fn generate(&self) -> impl Iterator<Item = Conversation> + Send + '_ {
        let vocab = Vocab::new();
        let splits = [
            (Split::Train, self.train),
            (Split::Val, self.val),
            (Split::Test, self.test),
            (Split::Unlabeled, self.unlabeled),
        ];
        splits
            .into_iter()
            .flat_map(|(split, n)| std::iter::repeat_n(split, n))
            .enumerate()
            .map(move |(i, split)| self.conversation(&vocab, i as u64, split))
    }

    fn conversation(&self, vocab: &Vocab, index: u64, split: Split) -> Conversation {
        // One stream per conversation: any conversation can be generated on its own.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index);
        let n = rng.random_range(self.min_utterances..=self.max_utterances);
        // Learnable unlabeled conversations have a status and a satisfaction too, named by
        // their words but not reported: unlabeled, not signal-free, as a domain's unlabeled
        // text is (what domain pretraining learns the outcome words from).
        let (status, satisfaction) = if split.is_labeled() || self.learnable {
            (Some(rng.random_range(0..=4u8)), Some(rng.random_range(0..=6u8)))
        } else {
            (None, None)
        };
        let mut utterances: Vec<Utterance> = (0..n)
            .map(|_| {
                let speaker = rng.random_range(2..=3u8);
                let label = rng.random_range(0..=9u8);
                let mut words = vocab.sentence(&mut rng);
                if self.learnable {
                    let (own, other) = if speaker == 2 { (CUSTOMER, OPERATOR) } else { (OPERATOR, CUSTOMER) };
                    for _ in 0..2 {
                        let markers = if rng.random_bool(self.noise / 4.0) { other } else { own };
                        insert_words(&mut rng, &mut words, markers, 1);
                    }
                }
                Utterance { text: finish_sentence(&mut rng, words), speaker, label }
            })
            .collect();
        let mut status = status;
        let mut satisfaction = satisfaction;
        if self.learnable {
            if let Some(s) = status {
                // `status_share` of the utterances (at least one) name the status; each
                // word may be another status's.
                let word = |rng: &mut ChaCha8Rng| {
                    let class = if rng.random_bool(self.noise) { rng.random_range(0..5) } else { s as usize };
                    *STATUS[class].choose(rng).unwrap()
                };
                let mut named = 0;
                for u in utterances.iter_mut() {
                    if rng.random_bool(self.status_share) {
                        append_word(&mut u.text, word(&mut rng));
                        named += 1;
                    }
                }
                if named == 0 {
                    let u = rng.random_range(0..utterances.len());
                    append_word(&mut utterances[u].text, word(&mut rng));
                }
                if rng.random_bool(self.noise / 4.0) {
                    status = Some(rng.random_range(0..=4u8));
                }
            }
            if let Some(s) = satisfaction {
                // A weaker signal: in the last utterances only (`satisfaction_utterances`),
                // each word sometimes missing, sometimes a neighbouring level's.
                let n = utterances.len();
                for u in &mut utterances[n - self.satisfaction_utterances.min(n)..] {
                    if !rng.random_bool(self.noise) {
                        let shown = if rng.random_bool(self.noise) {
                            (s as i64 + if rng.random_bool(0.5) { 1 } else { -1 }).clamp(0, 6) as usize
                        } else {
                            s as usize
                        };
                        append_word(&mut u.text, SATISFACTION[shown].choose(&mut rng).unwrap());
                    }
                }
                if rng.random_bool(self.noise / 4.0) {
                    satisfaction = Some(rng.random_range(0..=6u8));
                }
            }
        }
        let (status, satisfaction) = if split.is_labeled() { (status, satisfaction) } else { (None, None) };
        Conversation { id: ConvId::Int(index as i64), split, status, satisfaction, utterances }
    }
}

/// Writes the dataset as JSON lines to `url` (gzip-compressed when it ends in `.gz`);
/// returns the number of conversations. The file appears whole or not at all.
pub async fn write_jsonl(config: &SyntheticConfig, url: &str) -> Result<u64> {
    use tokio::io::{AsyncWrite, AsyncWriteExt};
    let (store, name) = crate::store::Store::open_file(url).or_else(|_| {
        // The parent directory may not exist yet.
        let parent = url.rsplit_once('/').map_or(".", |(p, _)| p);
        crate::store::Store::create(parent)?;
        crate::store::Store::open_file(url)
    })?;
    let writer = store.writer(&name);
    let mut sink: Box<dyn AsyncWrite + Unpin + Send> = if name.ends_with(".gz") {
        Box::new(async_compression::tokio::write::GzipEncoder::new(writer))
    } else {
        Box::new(writer)
    };
    let mut n = 0;
    let mut line = Vec::with_capacity(4096);
    for conversation in config.generate() {
        line.clear();
        serde_json::to_writer(&mut line, &super::ingest::to_record(&conversation))?;
        line.push(b'\n');
        sink.write_all(&line).await?;
        n += 1;
    }
    sink.shutdown().await?;
    Ok(n)
}

const FUNCTION_WORDS: &[&str] = &[
    "le", "la", "les", "de", "des", "du", "et", "un", "une", "je", "vous", "nous", "il", "elle", "est", "a", "à",
    "pour", "avec", "sur", "dans", "pas", "ne", "que", "qui", "ça", "très", "déjà", "été", "où", "mais", "donc",
    "aussi", "plus", "bien", "votre", "mon", "ma",
];
const SYLLABLES: &[&str] = &[
    "la", "ré", "con", "ti", "nu", "mé", "pro", "ser", "vi", "ce", "tion", "ment", "por", "ta", "ble", "ri", "que",
    "ou", "eu", "an", "on", "in", "è", "ê", "ça", "gé", "dé", "pas", "fi", "ran", "té", "lo", "gi", "mar", "cho", "sé",
    "quen", "bou", "leur", "ain", "oi", "vé", "ter",
];
const CUSTOMER: &[&str] = &["bonjour", "aidez-moi", "ma_commande", "panne", "pourquoi", "urgent", "client", "colis"];
const OPERATOR: &[&str] =
    &["conseiller", "vérifions", "patienter", "dossier", "procédure", "désolé", "assistance", "ticket"];
const STATUS: [&[&str]; 5] = [
    &["interrompu", "abandon", "déconnecté"],
    &["résolu", "réglé", "fonctionne"],
    &["tester", "essayer", "vérifiez"],
    &["hors_sujet", "autre_service", "redirigé"],
    &["impossible", "aucune_solution", "bloqué"],
];
const SATISFACTION: [&[&str]; 7] = [
    &["furieux", "inadmissible"],
    &["mécontent", "déçu"],
    &["bof", "moyen"],
    &["neutre", "correct"],
    &["satisfait", "merci"],
    &["content", "efficace"],
    &["ravi", "parfait"],
];

/// A fixed pseudo-French vocabulary (independent of the seed, so datasets share words).
struct Vocab {
    words: Vec<String>,
}

impl Vocab {
    fn new() -> Vocab {
        let mut rng = ChaCha8Rng::seed_from_u64(0x7AF7);
        let mut words: Vec<String> = FUNCTION_WORDS.iter().map(|w| w.to_string()).collect();
        while words.len() < 1500 {
            let n = rng.random_range(1..=3);
            let word: String = (0..n).map(|_| *SYLLABLES.choose(&mut rng).unwrap()).collect();
            if !words.contains(&word) {
                words.push(word);
            }
        }
        Vocab { words }
    }

    fn sentence(&self, rng: &mut ChaCha8Rng) -> Vec<String> {
        let n = rng.random_range(4..=14);
        (0..n)
            .map(|_| {
                // Function words are frequent, as in real text.
                if rng.random_bool(0.4) {
                    FUNCTION_WORDS.choose(rng).unwrap().to_string()
                } else {
                    self.words.choose(rng).unwrap().clone()
                }
            })
            .collect()
    }
}

fn insert_words(rng: &mut ChaCha8Rng, words: &mut Vec<String>, from: &[&str], n: usize) {
    for _ in 0..n {
        let at = rng.random_range(0..=words.len());
        words.insert(at, from.choose(rng).unwrap().to_string());
    }
}

fn append_word(text: &mut String, word: &str) {
    let end = text.pop();
    text.push(' ');
    text.push_str(word);
    text.extend(end);
}

fn finish_sentence(rng: &mut ChaCha8Rng, words: Vec<String>) -> String {
    let mut text = words.join(" ");
    if let Some(first) = text.chars().next() {
        let upper: String = first.to_uppercase().collect();
        text.replace_range(..first.len_utf8(), &upper);
    }
    text.push_str([".", "?", "!", "."].choose(rng).unwrap());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_and_spec_ranges() {
        let cfg = SyntheticConfig { train: 20, val: 5, test: 5, unlabeled: 30, ..Default::default() };
        let a: Vec<_> = cfg.generate().collect();
        let b: Vec<_> = cfg.generate().collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 60);
        let other: Vec<_> = SyntheticConfig { seed: 7, ..cfg.clone() }.generate().collect();
        assert_ne!(a, other);
        for c in &a {
            assert!((5..=15).contains(&c.utterances.len()));
            assert_eq!(c.status.is_some(), c.split.is_labeled());
            assert!(c.status.unwrap_or(0) <= 4 && c.satisfaction.unwrap_or(0) <= 6);
            assert!(c.utterances.iter().all(|u| (2..=3).contains(&u.speaker) && u.label <= 9));
        }
        assert!(a.iter().any(|c| c.utterances.iter().any(|u| !u.text.is_ascii())), "accents expected");
    }

    /// `train` learnable training conversations blurred by `noise`, no other split.
    fn learnable(train: usize, noise: f64) -> SyntheticConfig {
        SyntheticConfig { train, val: 0, test: 0, unlabeled: 0, learnable: true, noise, ..Default::default() }
    }

    #[test]
    fn learnable_variant_reveals_labels_in_words() {
        let cfg = learnable(50, 0.0);
        for c in cfg.generate() {
            for u in &c.utterances {
                let markers = if u.speaker == 2 { CUSTOMER } else { OPERATOR };
                assert!(markers.iter().any(|m| u.text.contains(m)), "{:?}", u);
            }
            let all: String = c.utterances.iter().map(|u| u.text.as_str()).collect::<Vec<_>>().join(" ");
            assert!(STATUS[c.status.unwrap() as usize].iter().any(|m| all.contains(m)));
            let last = &c.utterances.last().unwrap().text;
            assert!(SATISFACTION[c.satisfaction.unwrap() as usize].iter().any(|m| last.contains(m)));
        }
    }

    #[test]
    fn status_share_and_satisfaction_utterances_place_the_words() {
        let words = |cfg: &SyntheticConfig| {
            let (mut status, mut utterances, mut satisfied) = (0, 0, Vec::new());
            for c in cfg.generate() {
                let says = |text: &str, set: &[&str]| {
                    set.iter().any(|w| text.split(' ').any(|t| t.trim_end_matches(['.', '?', '!']) == *w))
                };
                for u in &c.utterances {
                    utterances += 1;
                    status += usize::from(says(&u.text, STATUS[c.status.unwrap() as usize]));
                }
                let level = SATISFACTION[c.satisfaction.unwrap() as usize];
                satisfied.push(c.utterances.iter().rev().take_while(|u| says(&u.text, level)).count());
            }
            (status as f64 / utterances as f64, satisfied)
        };
        let base = learnable(300, 0.0);
        let (share, last) = words(&base);
        assert!((0.35..0.5).contains(&share), "{share}");
        assert!(last.iter().all(|&k| k >= 1), "the last utterance names the satisfaction");
        assert!(last.iter().filter(|&&k| k >= 2).count() < 30, "mostly the last one only");
        let more = SyntheticConfig { status_share: 0.9, satisfaction_utterances: 3, ..base.clone() };
        let (share, last) = words(&more);
        assert!((0.85..0.95).contains(&share), "{share}");
        assert!(last.iter().all(|&k| k >= 3), "each of the last three: {last:?}");
        for (bad, want) in [
            (SyntheticConfig { status_share: 1.2, ..base.clone() }, "status_share 1.2 must be in [0, 1]"),
            (
                SyntheticConfig { satisfaction_utterances: 0, ..base.clone() },
                "satisfaction_utterances 0 must be in 1..=min_utterances (5)",
            ),
            (SyntheticConfig { satisfaction_utterances: 6, ..base }, "satisfaction_utterances 6 must be in"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    /// The share of conversations whose every status word names their status label.
    fn status_agreement(noise: f64) -> f64 {
        let cfg = learnable(400, noise);
        let agree = cfg
            .generate()
            .filter(|c| {
                let all: String = c.utterances.iter().map(|u| u.text.as_str()).collect::<Vec<_>>().join(" ");
                let named = |class: usize| STATUS[class].iter().any(|m| all.contains(m));
                (0..5).all(|class| named(class) == (class == c.status.unwrap() as usize))
            })
            .count();
        agree as f64 / 400.0
    }

    #[test]
    fn noise_blurs_the_signal_without_erasing_it() {
        assert_eq!(status_agreement(0.0), 1.0);
        let (some, more) = (status_agreement(0.2), status_agreement(0.6));
        assert!(0.5 < some && some < 0.95, "{some}");
        assert!(0.1 < more && more < some, "{more} vs {some}");
        let bad = SyntheticConfig { noise: 1.5, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("noise 1.5 must be in [0, 1]"));
    }
}
