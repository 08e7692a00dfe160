//! Conversations: the record type, JSON-lines ingestion with validation, the synthetic
//! generator, Parquet storage, dataset statistics, the tasks' label rules and the samplers.

pub mod ingest;
pub mod parquet;
pub mod samplers;
pub mod shard;
pub mod stats;
pub mod synthetic;
pub mod tasks;

use serde::{Deserialize, Serialize};

/// The fixed split a conversation belongs to (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
    Unlabeled,
}

impl Split {
    pub const ALL: [Split; 4] = [Split::Train, Split::Val, Split::Test, Split::Unlabeled];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::Unlabeled => "unlabeled",
        }
    }

    pub fn parse(s: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|split| split.as_str() == s)
    }

    /// Whether conversations of this split carry status and satisfaction labels.
    pub fn is_labeled(self) -> bool {
        self != Split::Unlabeled
    }
}

/// A conversation id, kept as the input gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConvId {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for ConvId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvId::Int(i) => write!(f, "{i}"),
            ConvId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl ConvId {
    /// Whether the conversation falls in the held-out `fraction` of a seeded hash of its
    /// id: whole conversations go to one side, whatever the file order.
    pub fn held_out(&self, seed: u64, fraction: f64) -> bool {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{seed}:{self}").as_bytes());
        let x = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        (x as f64 / u64::MAX as f64) < fraction
    }
}

/// One utterance: its text, the speaker role (SPEC §1 `authors`) and the emotion label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Utterance {
    pub text: String,
    pub speaker: u8,
    pub label: u8,
}

/// One customer-service conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: ConvId,
    pub split: Split,
    pub status: Option<u8>,
    pub satisfaction: Option<u8>,
    pub utterances: Vec<Utterance>,
}

/// Largest valid values (SPEC §1).
pub const MAX_STATUS: u8 = 4;
pub const MAX_SATISFACTION: u8 = 6;
pub const MAX_AUTHOR: u8 = 3;
pub const MAX_EMOTION: u8 = 11;
/// The text of the padding utterances that the original data carried.
pub const PAD_TEXT: &str = "<pad>";
