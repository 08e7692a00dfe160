//! Tokenizer training that gives the same `tokenizer.json` in every process. The trainers of
//! the `tokenizers` crate count words in hash maps seeded per process and break ties in map
//! order, so two runs on the same corpus differ. Here words are counted in an ordered map;
//! WordPiece's vocabulary comes from a BPE merge loop with an explicit tie-break (highest
//! count, then the pair made first); Unigram's EM runs on the sorted word list on a
//! one-thread pool (so its sums are added in one order), with every character of the corpus
//! also given as a word of its own (so no character is pruned and the trainer never orders
//! characters by hash), and its pieces are finally ordered by score, then by text.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::{Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use crate::error::{Error, Result};

fn fail(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("tokenizer training: {e}"))
}

/// How often each pre-tokenized word occurs in `texts`.
pub fn word_counts<I, S>(
    texts: I,
    normalizer: &impl Normalizer,
    pre_tokenizer: &impl PreTokenizer,
) -> Result<BTreeMap<String, u64>>
where
    I: Iterator<Item = S>,
    S: AsRef<str>,
{
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for text in texts {
        let mut normalized = tokenizers::NormalizedString::from(text.as_ref());
        normalizer.normalize(&mut normalized).map_err(fail)?;
        let mut pre = PreTokenizedString::from(normalized);
        pre_tokenizer.pre_tokenize(&mut pre).map_err(fail)?;
        for (word, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *counts.entry(word.to_string()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// A Unigram model of at most `trainer`'s vocabulary size; `specials` are the trainer's
/// special tokens (first in the vocabulary, in this order) and `unk` one of them.
pub fn unigram(
    words: &BTreeMap<String, u64>,
    trainer: &UnigramTrainer,
    specials: &[String],
    unk: &str,
) -> Result<Unigram> {
    let mut sentences: Vec<(String, u32)> =
        words.iter().map(|(w, &n)| (w.clone(), u32::try_from(n).unwrap_or(u32::MAX))).collect();
    let chars: BTreeSet<char> = words.keys().flat_map(|w| w.chars()).collect();
    sentences.extend(chars.iter().map(|c| (c.to_string(), 1)));
    let mut model = Unigram::default();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(fail)?;
    pool.install(|| trainer.do_train(sentences, &mut model)).map_err(fail)?;
    let mut pieces: Vec<(String, f64)> = model.iter().cloned().collect();
    let n = specials.len();
    if pieces.len() < n || pieces[..n].iter().map(|(p, _)| p).ne(specials.iter()) {
        return Err(fail("the trained vocabulary does not start with the special tokens"));
    }
    pieces[n..].sort_by(|(a, x), (b, y)| y.total_cmp(x).then_with(|| a.cmp(b)));
    let unk_id = specials.iter().position(|s| s == unk);
    Unigram::from(pieces, unk_id, false).map_err(fail)
}

/// A WordPiece model: `specials`, every character (word-initial, then `##`-continuing, each
/// sorted), then the tokens of BPE merges in the order made, up to `vocab_size` tokens.
pub fn wordpiece(
    words: &BTreeMap<String, u64>,
    specials: &[String],
    unk: &str,
    vocab_size: usize,
) -> Result<WordPiece> {
    const PREFIX: &str = "##";
    let mut initial: BTreeSet<String> = BTreeSet::new();
    let mut continuing: BTreeSet<String> = BTreeSet::new();
    for word in words.keys() {
        for (i, c) in word.chars().enumerate() {
            if i == 0 {
                initial.insert(c.to_string());
            } else {
                continuing.insert(format!("{PREFIX}{c}"));
            }
        }
    }
    let mut tokens: Vec<String> = specials.to_vec();
    for t in initial.into_iter().chain(continuing) {
        if !tokens.contains(&t) {
            tokens.push(t);
        }
    }
    let mut id_of: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    // Words as symbol ids, with their counts.
    let mut corpus: Vec<(Vec<u32>, i64)> = words
        .iter()
        .map(|(w, &n)| {
            let symbols = w
                .chars()
                .enumerate()
                .map(|(i, c)| if i == 0 { c.to_string() } else { format!("{PREFIX}{c}") })
                .map(|s| id_of[&s])
                .collect();
            (symbols, n as i64)
        })
        .collect();
    // Pair counts, the words each pair occurs in, and the pairs ordered by (count desc, ids).
    let mut counts: HashMap<(u32, u32), i64> = HashMap::new();
    let mut occurs: HashMap<(u32, u32), BTreeSet<usize>> = HashMap::new();
    for (w, (symbols, n)) in corpus.iter().enumerate() {
        for pair in symbols.windows(2) {
            *counts.entry((pair[0], pair[1])).or_default() += n;
            occurs.entry((pair[0], pair[1])).or_default().insert(w);
        }
    }
    let mut queue: BTreeSet<(Reverse<i64>, u32, u32)> = counts.iter().map(|(&(a, b), &c)| (Reverse(c), a, b)).collect();
    while tokens.len() < vocab_size {
        let Some(&(Reverse(count), a, b)) = queue.iter().next() else { break };
        if count <= 0 {
            break;
        }
        let merged =
            format!("{}{}", tokens[a as usize], tokens[b as usize].strip_prefix(PREFIX).unwrap_or(&tokens[b as usize]));
        let id = match id_of.get(&merged) {
            Some(&id) => id,
            None => {
                tokens.push(merged.clone());
                id_of.insert(merged, (tokens.len() - 1) as u32);
                (tokens.len() - 1) as u32
            }
        };
        let touched = occurs.remove(&(a, b)).unwrap_or_default();
        for w in touched {
            let (symbols, n) = &mut corpus[w];
            let n = *n;
            let mut change = |pair: (u32, u32), delta: i64, queue: &mut BTreeSet<(Reverse<i64>, u32, u32)>| {
                let c = counts.entry(pair).or_default();
                queue.remove(&(Reverse(*c), pair.0, pair.1));
                *c += delta;
                if *c > 0 {
                    queue.insert((Reverse(*c), pair.0, pair.1));
                }
            };
            for pair in symbols.windows(2) {
                change((pair[0], pair[1]), -n, &mut queue);
            }
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
                    next.push(id);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            *symbols = next;
            for pair in symbols.windows(2) {
                change((pair[0], pair[1]), n, &mut queue);
                occurs.entry((pair[0], pair[1])).or_default().insert(w);
            }
        }
        if let Some(c) = counts.remove(&(a, b)) {
            queue.remove(&(Reverse(c), a, b));
        }
    }
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    WordPiece::builder()
        .vocab(vocab)
        .unk_token(unk.to_string())
        .continuing_subword_prefix(PREFIX.to_string())
        .build()
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::Model;

    #[test]
    fn merges_follow_counts_and_ties_break_in_a_fixed_order() {
        let words: BTreeMap<String, u64> =
            [("abab", 3), ("ab", 2), ("cd", 1)].into_iter().map(|(w, n)| (w.to_string(), n)).collect();
        let specials = vec!["[UNK]".to_string()];
        let wp = wordpiece(&words, &specials, "[UNK]", 100).unwrap();
        let mut vocab: Vec<(String, u32)> = wp.get_vocab().into_iter().collect();
        vocab.sort_by_key(|(_, id)| *id);
        let tokens: Vec<&str> = vocab.iter().map(|(t, _)| t.as_str()).collect();
        // The alphabet (initial, then continuing), then the merges: a+##b (count 5); ##a+##b
        // (3, tied with ab+##a: the pair of lower ids first); ab+##ab (3); c+##d (1).
        assert_eq!(tokens, ["[UNK]", "a", "c", "##a", "##b", "##d", "ab", "##ab", "abab", "cd"]);
    }
}
