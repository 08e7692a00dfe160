//! Tokenizers: load a Hugging Face `tokenizer.json`, train a new one from utterances
//! (WordPiece for the BERT family, Unigram for the RoBERTa family), and encode batches and
//! conversations with truncation and dynamic padding.

use serde::{Deserialize, Serialize};
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::{BertNormalizer, NFKC};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

pub mod train;

/// Which tokens of a text longer than the model's length are kept; the special tokens
/// around the text always are. `head` is the original's (and Hugging Face's default); the
/// end of a conversation, where outcomes and satisfaction are often stated, survives `tail`
/// and `head_tail` (the best of the strategies compared by Sun et al., 2019, "How to
/// Fine-Tune BERT for Text Classification?").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationSide {
    #[default]
    Head,
    Tail,
    HeadTail,
}

/// The token counts `head_tail` keeps from each end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadTail {
    pub head: usize,
    pub tail: usize,
}

/// A truncation rule: the side, and with `head_tail` the counts (by default a quarter of
/// the text tokens from the head, the rest from the tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truncation {
    #[serde(default)]
    pub truncation: TruncationSide,
    #[serde(default)]
    pub head_tail: Option<HeadTail>,
}

impl Truncation {
    /// Checks the counts against the text tokens a `max_length` leaves (the special tokens
    /// take `specials`).
    pub fn check(&self, max_length: usize, specials: usize) -> std::result::Result<(), String> {
        if let Some(ht) = self.head_tail {
            if self.truncation != TruncationSide::HeadTail {
                return Err("head_tail is set but truncation is not head_tail".into());
            }
            let budget = max_length.saturating_sub(specials);
            if ht.head + ht.tail > budget || ht.head + ht.tail == 0 {
                return Err(format!(
                    "head_tail: head {} + tail {} must be in 1..={budget} (max_length {max_length} less {specials} special tokens)",
                    ht.head, ht.tail
                ));
            }
        }
        Ok(())
    }

    /// The text tokens kept of `content` when at most `budget` fit.
    fn cut<'a>(&self, content: &'a [i64], budget: usize) -> Vec<&'a [i64]> {
        if content.len() <= budget {
            return vec![content];
        }
        match self.truncation {
            TruncationSide::Head => vec![&content[..budget]],
            TruncationSide::Tail => vec![&content[content.len() - budget..]],
            TruncationSide::HeadTail => {
                let (head, tail) = match self.head_tail {
                    Some(ht) => (ht.head.min(budget), ht.tail.min(budget - ht.head.min(budget))),
                    None => (budget / 4, budget - budget / 4),
                };
                vec![&content[..head], &content[content.len() - tail..]]
            }
        }
    }
}

/// Which tokenizer model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// WordPiece with BERT's special tokens (`[CLS] [SEP] [PAD] [MASK] [UNK]`).
    #[default]
    WordPiece,
    /// Unigram with RoBERTa's special tokens (`<s> </s> <pad> <mask> <unk>`).
    Unigram,
}

/// The special tokens of a tokenizer family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    pub cls: String,
    pub sep: String,
    pub pad: String,
    pub mask: String,
    pub unk: String,
}

impl SpecialTokens {
    pub fn bert() -> Self {
        SpecialTokens {
            cls: "[CLS]".into(),
            sep: "[SEP]".into(),
            pad: "[PAD]".into(),
            mask: "[MASK]".into(),
            unk: "[UNK]".into(),
        }
    }

    pub fn roberta() -> Self {
        SpecialTokens {
            cls: "<s>".into(),
            sep: "</s>".into(),
            pad: "<pad>".into(),
            mask: "<mask>".into(),
            unk: "<unk>".into(),
        }
    }

    fn all(&self) -> [&str; 5] {
        [&self.cls, &self.sep, &self.pad, &self.mask, &self.unk]
    }
}

/// A batch of token ids, row-major `[batch, seq]`, padded to the longest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
}

/// A tokenizer with its family's special tokens resolved to ids.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pub special: SpecialTokens,
    pub pad_id: u32,
    pub mask_id: u32,
    pub cls_id: u32,
    pub sep_id: u32,
}

impl TextTokenizer {
    /// Reads a `tokenizer.json`; the family is recognised by its special tokens.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let inner =
            Tokenizer::from_bytes(bytes).map_err(|e| Error::input(format!("{source}: not a tokenizer.json: {e}")))?;
        Self::wrap(inner, source)
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    fn wrap(inner: Tokenizer, source: &str) -> Result<Self> {
        let special = [SpecialTokens::bert(), SpecialTokens::roberta()]
            .into_iter()
            .find(|s| s.all().iter().all(|t| inner.token_to_id(t).is_some()))
            .ok_or_else(|| {
                Error::input(format!(
                    "{source}: the vocabulary lacks the special tokens of both families ([CLS] [SEP] [PAD] [MASK] [UNK] / <s> </s> <pad> <mask> <unk>)"
                ))
            })?;
        let id = |t: &str| inner.token_to_id(t).expect("checked above");
        Ok(TextTokenizer {
            pad_id: id(&special.pad),
            mask_id: id(&special.mask),
            cls_id: id(&special.cls),
            sep_id: id(&special.sep),
            special,
            inner,
        })
    }

    /// Trains a tokenizer on `texts`; the same texts give the same tokenizer in every
    /// process (see [`train`]).
    pub fn train<I, S>(texts: I, kind: TokenizerKind, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S>,
        S: AsRef<str>,
    {
        let fail = |e: tokenizers::Error| Error::Other(format!("tokenizer training: {e}"));
        let (special, mut tokenizer) = match kind {
            TokenizerKind::WordPiece => {
                let special = SpecialTokens::bert();
                let mut t = Tokenizer::new(WordPiece::builder().unk_token(special.unk.clone()).build().map_err(fail)?);
                // Lower-cased, accents kept (French).
                t.with_normalizer(Some(BertNormalizer::new(true, true, Some(false), true))).map_err(fail)?;
                t.with_pre_tokenizer(Some(BertPreTokenizer));
                t.with_decoder(Some(WordPieceDecoder::default()));
                (special, t)
            }
            TokenizerKind::Unigram => {
                let special = SpecialTokens::roberta();
                let mut t = Tokenizer::new(Unigram::default());
                t.with_normalizer(Some(NFKC)).map_err(fail)?;
                // `<` and `>` stand alone, so that no piece of text can spell a special token
                // (`</s>`, `<pad>`): the model's special pieces can only come from the encoder.
                let angles = Split::new(SplitPattern::Regex("[<>]".into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(fail)?;
                t.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    Metaspace::new('▁', PrependScheme::Always, true).into(),
                    angles.into(),
                ]))));
                t.with_decoder(Some(MetaspaceDecoder::new('▁', PrependScheme::Always, true)));
                (special, t)
            }
        };
        let specials = ordered(&special, kind);
        let names: Vec<String> = specials.iter().map(|t| t.content.clone()).collect();
        let (normalizer, pre_tokenizer) = match (tokenizer.get_normalizer(), tokenizer.get_pre_tokenizer()) {
            (Some(n), Some(p)) => (n, p),
            _ => return Err(Error::Other("tokenizer training: no normalizer or pre-tokenizer".into())),
        };
        let words = train::word_counts(texts, normalizer, pre_tokenizer)?;
        match kind {
            TokenizerKind::WordPiece => {
                tokenizer.with_model(train::wordpiece(&words, &names, &special.unk, vocab_size)?);
            }
            TokenizerKind::Unigram => {
                let trainer = UnigramTrainer::builder()
                    .vocab_size(u32::try_from(vocab_size).unwrap_or(u32::MAX))
                    .show_progress(false)
                    .special_tokens(specials.clone())
                    .unk_token(Some(special.unk.clone()))
                    .build()
                    .map_err(|e| Error::Other(format!("tokenizer training: {e}")))?;
                tokenizer.with_model(train::unigram(&words, &trainer, &names, &special.unk)?);
            }
        }
        tokenizer.add_special_tokens(specials.clone()).map_err(fail)?;
        let id =
            |t: &str| tokenizer.token_to_id(t).ok_or_else(|| Error::Other(format!("trained vocabulary lacks {t}")));
        let (cls, sep) = (id(&special.cls)?, id(&special.sep)?);
        let template = match kind {
            TokenizerKind::WordPiece => TemplateProcessing::builder()
                .try_single(format!("{} $A {}", special.cls, special.sep))
                .and_then(|b| b.try_pair(format!("{0} $A {1} $B:1 {1}:1", special.cls, special.sep)))
                .map_err(|e| Error::Other(format!("tokenizer template: {e}")))?
                .special_tokens(vec![(special.cls.clone(), cls), (special.sep.clone(), sep)])
                .build(),
            TokenizerKind::Unigram => TemplateProcessing::builder()
                .try_single(format!("{} $A {}", special.cls, special.sep))
                .and_then(|b| b.try_pair(format!("{0} $A {1} {1} $B {1}", special.cls, special.sep)))
                .map_err(|e| Error::Other(format!("tokenizer template: {e}")))?
                .special_tokens(vec![(special.cls.clone(), cls), (special.sep.clone(), sep)])
                .build(),
        }
        .map_err(|e| Error::Other(format!("tokenizer template: {e}")))?;
        tokenizer.with_post_processor(Some(template));
        Self::wrap(tokenizer, "trained tokenizer")
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| Error::Other(format!("tokenizer serialisation: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest token id the tokenizer can produce.
    pub fn max_id(&self) -> u32 {
        self.inner.get_vocab(true).into_values().max().unwrap_or(0)
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of the special tokens (never masked, never predicted).
    pub fn special_ids(&self) -> Vec<u32> {
        self.special.all().iter().filter_map(|t| self.inner.token_to_id(t)).collect()
    }

    /// Token ids of each item with its special tokens, neither truncated nor padded.
    pub fn encode_ids<T: Segments>(&self, items: &[T]) -> Result<Vec<Vec<i64>>> {
        self.batches(usize::MAX, Truncation::default())?.ids(items)
    }

    /// Encodes texts with special tokens, truncated to `max_len` tokens (the head kept) and
    /// padded to the longest row.
    pub fn encode_batch<T: Segments>(&self, texts: &[T], max_len: usize) -> Result<Encoded> {
        self.batches(max_len, Truncation::default())?.encode(texts)
    }

    /// A tokenizer set up once for [`BatchEncoder::encode`] at `max_len` with `truncation`
    /// (for callers that encode many batches).
    pub fn batches(&self, max_len: usize, truncation: Truncation) -> Result<BatchEncoder> {
        let mut t = self.inner.clone();
        t.with_truncation(None).map_err(|e| Error::Other(format!("truncation: {e}")))?;
        t.with_padding(None);
        // Text that spells a special token is text (tokenizers' `split_special_tokens`): only
        // the encoder places special tokens.
        t.set_encode_special_tokens(true);
        // The tokens the post-processor puts around a text (sequence id `None`).
        let probe = t.encode("a", true).map_err(|e| Error::Other(format!("tokenization: {e}")))?;
        let (ids, sequence) = (probe.get_ids(), probe.get_sequence_ids());
        let front = sequence.iter().take_while(|s| s.is_none()).count();
        let back = if front == ids.len() { 0 } else { sequence.iter().rev().take_while(|s| s.is_none()).count() };
        Ok(BatchEncoder {
            tokenizer: t,
            pad: i64::from(self.pad_id),
            sep: i64::from(self.sep_id),
            front: ids[..front].iter().map(|&i| i64::from(i)).collect(),
            back: ids[ids.len() - back..].iter().map(|&i| i64::from(i)).collect(),
            max_len,
            truncation,
        })
    }
}

/// What a model reads: one text, or a conversation's utterances, which the encoder joins
/// with the separator token (SPEC §2) at the level of token ids, so that no text, whatever
/// it spells, can add or remove a separator.
pub trait Segments {
    fn segments(&self) -> Vec<&str>;
}

impl Segments for str {
    fn segments(&self) -> Vec<&str> {
        vec![self]
    }
}

impl Segments for String {
    fn segments(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl<T: Segments + ?Sized> Segments for &T {
    fn segments(&self) -> Vec<&str> {
        (**self).segments()
    }
}

impl<S: AsRef<str>> Segments for [S] {
    fn segments(&self) -> Vec<&str> {
        self.iter().map(AsRef::as_ref).collect()
    }
}

impl<S: AsRef<str>> Segments for Vec<S> {
    fn segments(&self) -> Vec<&str> {
        self.iter().map(AsRef::as_ref).collect()
    }
}

/// Up to this many bytes of text, [`BatchEncoder::ids`] encodes on the calling thread rather
/// than on the thread pool.
const SEQUENTIAL_BYTES: usize = 2048;

/// A tokenizer with truncation set: token ids of texts, and batches of them padded to their
/// longest row.
#[derive(Clone)]
pub struct BatchEncoder {
    tokenizer: Tokenizer,
    pad: i64,
    sep: i64,
    /// The special tokens around every item (`[CLS]` … `[SEP]`, `<s>` … `</s>`).
    front: Vec<i64>,
    back: Vec<i64>,
    max_len: usize,
    truncation: Truncation,
}

impl BatchEncoder {
    /// Encodes items with special tokens, truncated and padded to the longest row.
    pub fn encode<T: Segments>(&self, items: &[T]) -> Result<Encoded> {
        let ids = self.ids(items)?;
        Ok(self.pad(&ids.iter().map(Vec::as_slice).collect::<Vec<_>>()))
    }

    /// The token ids of each item with its special tokens, truncated, not padded: the
    /// segments' tokens, separated by the separator token, between the special tokens the
    /// tokenizer's post-processor puts around a text.
    pub fn ids<T: Segments>(&self, items: &[T]) -> Result<Vec<Vec<i64>>> {
        let segments: Vec<Vec<&str>> = items.iter().map(Segments::segments).collect();
        let flat: Vec<&str> = segments.iter().flatten().copied().collect();
        // Little text is encoded on this thread: handing it to the thread pool and back costs
        // more than it saves.
        let bytes: usize = flat.iter().map(|s| s.len()).sum();
        let encodings = if bytes <= SEQUENTIAL_BYTES {
            flat.into_iter().map(|s| self.tokenizer.encode(s, false)).collect()
        } else {
            self.tokenizer.encode_batch(flat, false)
        }
        .map_err(|e| Error::Other(format!("tokenization: {e}")))?;
        let mut encodings = encodings.iter();
        let mut out = Vec::with_capacity(items.len());
        let mut content = Vec::new();
        for s in &segments {
            content.clear();
            for (k, e) in encodings.by_ref().take(s.len()).enumerate() {
                if k > 0 {
                    content.push(self.sep);
                }
                content.extend(e.get_ids().iter().map(|&i| i64::from(i)));
            }
            out.push(self.truncate(&content));
        }
        Ok(out)
    }

    /// The special tokens stay at either end; the content between them is cut to what
    /// `max_len` leaves.
    fn truncate(&self, content: &[i64]) -> Vec<i64> {
        let budget = self.max_len.saturating_sub(self.specials());
        let mut out = Vec::with_capacity(self.max_len.min(content.len() + self.specials()));
        out.extend_from_slice(&self.front);
        for part in self.truncation.cut(content, budget) {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.back);
        out
    }

    /// The special tokens around an item (what `max_len` must leave room for).
    pub fn specials(&self) -> usize {
        self.front.len() + self.back.len()
    }

    /// Rows of token ids as a batch padded (on the right) to `width` tokens (at least the
    /// longest row's).
    pub fn pad_to(&self, rows: &[&[i64]], width: usize) -> Encoded {
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(width);
        let mut out = Encoded {
            input_ids: Vec::with_capacity(seq * rows.len()),
            attention_mask: Vec::with_capacity(seq * rows.len()),
            batch: rows.len(),
            seq,
        };
        for r in rows {
            out.input_ids.extend_from_slice(r);
            out.input_ids.extend(std::iter::repeat_n(self.pad, seq - r.len()));
            out.attention_mask.extend(std::iter::repeat_n(1, r.len()));
            out.attention_mask.extend(std::iter::repeat_n(0, seq - r.len()));
        }
        out
    }

    /// Rows of token ids as a batch padded (on the right) to the longest.
    pub fn pad(&self, rows: &[&[i64]]) -> Encoded {
        self.pad_to(rows, 0)
    }
}

/// Special tokens in the order that fixes their ids (RoBERTa: `<s>`=0, `<pad>`=1, `</s>`=2).
fn ordered(s: &SpecialTokens, kind: TokenizerKind) -> Vec<AddedToken> {
    let names: Vec<&String> = match kind {
        TokenizerKind::WordPiece => vec![&s.pad, &s.unk, &s.cls, &s.sep, &s.mask],
        TokenizerKind::Unigram => vec![&s.cls, &s.pad, &s.sep, &s.unk, &s.mask],
    };
    names.into_iter().map(|n| AddedToken::from(n.clone(), true)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::SyntheticConfig;

    fn corpus() -> Vec<String> {
        let cfg = SyntheticConfig { train: 0, val: 0, test: 0, unlabeled: 200, ..Default::default() };
        cfg.generate().flat_map(|c| c.utterances.into_iter().map(|u| u.text)).collect()
    }

    #[test]
    fn trains_both_families_and_round_trips_through_json() {
        let texts = corpus();
        for (kind, cls, pad) in [(TokenizerKind::WordPiece, "[CLS]", 0), (TokenizerKind::Unigram, "<s>", 1)] {
            let tok = TextTokenizer::train(texts.iter(), kind, 500).unwrap();
            assert_eq!(tok.pad_id, pad, "{kind:?}");
            assert!(tok.vocab_size() <= 500 && tok.vocab_size() > 100, "{kind:?}: {}", tok.vocab_size());
            let enc = tok.encode_batch(&["Bonjour, ça été réglé.", "Merci"], 16).unwrap();
            assert_eq!(enc.batch, 2);
            assert_eq!(enc.input_ids[0], i64::from(tok.token_id(cls).unwrap()));
            // The short row is padded with the pad id and a zero mask.
            assert_eq!(enc.input_ids[enc.seq * 2 - 1], i64::from(tok.pad_id));
            assert_eq!(enc.attention_mask[enc.seq * 2 - 1], 0);
            let back = TextTokenizer::from_bytes(tok.to_json().unwrap().as_bytes(), "json").unwrap();
            assert_eq!(back.encode_batch(&["Bonjour, ça été réglé.", "Merci"], 16).unwrap(), enc);
            // Truncation keeps the special tokens at both ends.
            let long = tok.encode_batch(&[texts[..20].join(" ")], 12).unwrap();
            assert_eq!(long.seq, 12);
            assert_eq!(long.input_ids[11], i64::from(tok.sep_id));
        }
    }

    #[test]
    fn ids_are_the_same_encoded_on_the_calling_thread_or_the_pool() {
        let texts = corpus();
        let items: Vec<Vec<&str>> = texts.chunks(5).take(40).map(|c| c.iter().map(String::as_str).collect()).collect();
        let bytes = |item: &Vec<&str>| item.iter().map(|s| s.len()).sum::<usize>();
        assert!(items.iter().map(bytes).sum::<usize>() > SEQUENTIAL_BYTES, "all at once: the pool");
        assert!(items.iter().all(|i| bytes(i) <= SEQUENTIAL_BYTES), "each alone: the calling thread");
        for kind in [TokenizerKind::WordPiece, TokenizerKind::Unigram] {
            let tok = TextTokenizer::train(texts.iter(), kind, 300).unwrap();
            let enc = tok.batches(64, Truncation::default()).unwrap();
            let together = enc.ids(&items).unwrap();
            let alone: Vec<Vec<i64>> =
                items.iter().map(|i| enc.ids(std::slice::from_ref(i)).unwrap().remove(0)).collect();
            assert_eq!(together, alone, "{kind:?}");
        }
    }

    #[test]
    fn truncation_keeps_the_head_the_tail_or_both() {
        let texts = corpus();
        for kind in [TokenizerKind::WordPiece, TokenizerKind::Unigram] {
            let tok = TextTokenizer::train(texts.iter(), kind, 400).unwrap();
            let text = texts[..12].to_vec();
            let full = tok.encode_ids(&[&text]).unwrap().remove(0);
            let (first, last) = (full[0], *full.last().unwrap());
            let content = &full[1..full.len() - 1];
            assert!(content.len() > 40, "a long text");
            let cut = |truncation, head_tail| {
                let t = Truncation { truncation, head_tail };
                let ids = tok.batches(12, t).unwrap().ids(&[&text]).unwrap().remove(0);
                assert_eq!((ids.len(), ids[0], ids[11]), (12, first, last), "{t:?}: the special tokens stay");
                ids[1..11].to_vec()
            };
            let n = content.len();
            assert_eq!(cut(TruncationSide::Head, None), content[..10]);
            assert_eq!(cut(TruncationSide::Tail, None), content[n - 10..]);
            let both = [&content[..3], &content[n - 7..]].concat();
            assert_eq!(cut(TruncationSide::HeadTail, Some(HeadTail { head: 3, tail: 7 })), both);
            // By default a quarter of the budget from the head (10 / 4 = 2), the rest from the tail.
            assert_eq!(cut(TruncationSide::HeadTail, None), [&content[..2], &content[n - 8..]].concat());
            // The head is what Hugging Face's truncation keeps.
            assert_eq!(
                tok.encode_batch(&[&text], 12).unwrap().input_ids,
                [&[first][..], &content[..10], &[last]].concat()
            );
            // A text that fits is left whole.
            let short =
                tok.batches(full.len(), Truncation { truncation: TruncationSide::Tail, head_tail: None }).unwrap();
            assert_eq!(short.ids(&[&text]).unwrap()[0], full);
        }
        let bad = Truncation { truncation: TruncationSide::HeadTail, head_tail: Some(HeadTail { head: 6, tail: 5 }) };
        assert!(bad.check(12, 2).unwrap_err().contains("must be in 1..=10"));
        let unused = Truncation { truncation: TruncationSide::Head, head_tail: Some(HeadTail { head: 1, tail: 1 }) };
        assert!(unused.check(12, 2).is_err());
    }

    #[test]
    fn conversations_join_utterances_with_the_separator_and_text_never_makes_a_special_token() {
        let texts = corpus();
        for kind in [TokenizerKind::WordPiece, TokenizerKind::Unigram] {
            let tok = TextTokenizer::train(texts.iter(), kind, 300).unwrap();
            let enc = |items: &[Vec<&str>]| tok.batches(64, Truncation::default()).unwrap().ids(items).unwrap();
            let alone = |t: &str| {
                let ids = enc(&[vec![t]]).remove(0);
                ids[1..ids.len() - 1].to_vec()
            };
            let (cls, sep) = (i64::from(tok.cls_id), i64::from(tok.sep_id));
            // A conversation is its utterances' tokens, each as if alone, between separators.
            let got = enc(&[vec!["bonjour", "merci beaucoup"]]).remove(0);
            let want = [&[cls][..], &alone("bonjour"), &[sep], &alone("merci beaucoup"), &[sep]].concat();
            assert_eq!(got, want, "{kind:?}");
            // Text that spells a special token is text: the only special tokens are the
            // encoder's own, whatever an utterance says.
            // (`[UNK]` is what a character outside a small vocabulary is.)
            let unk = tok.token_id(&tok.special.unk).map(i64::from);
            let specials: Vec<i64> = tok.special_ids().into_iter().map(i64::from).filter(|&i| Some(i) != unk).collect();
            for spelled in ["</s>", "<s>", "<pad>", "<mask>", "[SEP]", "[CLS]", "[PAD]", "[MASK]", "a</s>b <pad> c"] {
                let ids = enc(&[vec!["merci", spelled]]).remove(0);
                let placed: Vec<usize> =
                    ids.iter().enumerate().filter(|(_, i)| specials.contains(i)).map(|(k, _)| k).collect();
                let sep_at = 1 + alone("merci").len();
                assert_eq!(placed, [0, sep_at, ids.len() - 1], "{kind:?} {spelled:?}: {ids:?}");
                assert!(ids.len() > sep_at + 2, "{kind:?} {spelled:?}: the text has tokens");
            }
        }
    }
}
