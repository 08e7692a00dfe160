//! What a model scores: a conversation-level model (status, satisfaction) takes one item per
//! conversation, its utterances joined by the separator token (SPEC §2); the speaker-role
//! model takes one item per customer or operator utterance, as `evaluate` scores them.

use crate::data::ConvId;

/// One item to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: ConvId,
    /// The utterance's index in its conversation (utterance-level models).
    pub utterance: Option<i32>,
    /// What the model reads: the conversation's utterances (joined by the separator token
    /// when encoded), or the one utterance a role model scores.
    pub text: Vec<String>,
}

/// Speakers whose utterances the role model scores (SPEC §1 `authors`: 2 customer, 3 operator).
const FIRST_ROLE: u8 = 2;

/// The items of one conversation. `authors` (one per text) select the utterances a role
/// model scores; without them every utterance is scored.
pub fn of_conversation(id: &ConvId, texts: &[String], authors: Option<&[u8]>, utterance_level: bool) -> Vec<Item> {
    if !utterance_level {
        return vec![Item { id: id.clone(), utterance: None, text: texts.to_vec() }];
    }
    texts
        .iter()
        .enumerate()
        .filter(|(i, _)| authors.is_none_or(|a| a.get(*i).is_some_and(|&s| s >= FIRST_ROLE)))
        .map(|(i, t)| Item { id: id.clone(), utterance: Some(i as i32), text: vec![t.clone()] })
        .collect()
}

pub use crate::data::shard::Shard;
