//! The frozen-encoder cache (methods taft and noadapt): with the encoder frozen, its hidden
//! states for a conversation are the same every epoch, so they are computed once, in
//! inference mode, and only what lies above the encoder trains. The states come either from
//! `encode` outputs given as inputs ([`EncoderCache::open`]) or, with `encoder_cache: true`,
//! from a pass the step makes itself ([`EncoderCache::build`]).
//!
//! - One encoder pass per distinct conversation (token ids), whatever the task or split.
//! - noadapt's pooler reads the first token only, so only that state is kept; taft's
//!   adaptive layer reads every token.
//! - Built states are kept as fp16 (or fp32) on the host up to a memory budget, past which
//!   they go to an unnamed file in the step's scratch folder (the output's `_work/` on local
//!   disk); opened states stay in their files. Either way they are read back per batch.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::bert::{Encoder, Rows};
use crate::steps::encode::{key, IndexRecord};
use crate::steps::training::Items;

/// Where one conversation's states are.
enum Entry {
    Memory(Tensor),
    /// Which file, the byte offset in it and the token count.
    File(usize, u64, usize),
}

/// The encoder's output for every conversation the step reads.
pub struct EncoderCache {
    /// Entry of each conversation, by [`key`] of its token ids.
    slot: HashMap<u128, usize>,
    entries: Vec<Entry>,
    files: Vec<File>,
    /// Which of `files` takes spilled states.
    spill: Option<usize>,
    spilled_bytes: u64,
    hidden: i64,
    kind: Kind,
    /// Whether the states came from `encode` outputs.
    opened: bool,
}

/// How the cache is built.
pub struct CacheSettings<'a> {
    /// Keep the first token's state only (the pooler is all that reads it).
    pub first_token_only: bool,
    pub fp16: bool,
    /// Host memory for states; past it they spill to disk.
    pub memory_bytes: u64,
    /// The folder of the spill file.
    pub scratch: &'a Path,
    pub batch_size: usize,
    pub pad: i64,
    pub device: Device,
}

/// The distinct conversations (token ids) of `items`, in order of first appearance.
pub fn distinct<'a>(items: impl IntoIterator<Item = &'a Vec<i64>>) -> Vec<&'a Vec<i64>> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().filter(|ids| seen.insert(key(ids))).collect()
}

/// Runs the frozen encoder once (inference mode) over each of `rows`, longest first, in
/// batches, and hands `sink` each row's index and states ([tokens kept, hidden] on the
/// host, as `kind`): the first token's only with `first_token_only`, else every token, and
/// with a `fixed` width the states of the padding up to it too (what the unmasked adaptive
/// layer attends must not depend on the rest of a batch).
pub fn encode_each(
    encoder: &Encoder,
    rows: &[&Vec<i64>],
    fixed: Option<usize>,
    settings: &CacheSettings,
    mut sink: impl FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].len()));
    let kind = if settings.fp16 { Kind::Half } else { Kind::Float };
    tch::no_grad(|| {
        for chunk in order.chunks(settings.batch_size.max(1)) {
            if crate::runtime::stop_requested() {
                return Err(Error::Interrupted("stopped by SIGTERM while encoding; nothing was committed".into()));
            }
            let width = rows[chunk[0]].len().max(fixed.unwrap_or(0));
            let (mut ids, mut mask) = (Vec::with_capacity(chunk.len() * width), Vec::new());
            for &r in chunk {
                let row = rows[r];
                ids.extend(row.iter().copied().chain(std::iter::repeat_n(settings.pad, width - row.len())));
                mask.extend(std::iter::repeat_n(1i64, row.len()).chain(std::iter::repeat_n(0, width - row.len())));
            }
            let shape = [chunk.len() as i64, width as i64];
            let ids = Tensor::from_slice(&ids).view(shape).to(settings.device);
            let mask = Tensor::from_slice(&mask).view(shape).to(settings.device);
            let rows_kept = if settings.first_token_only { Rows::First } else { Rows::All };
            let states =
                encoder.forward_rows_t(&ids, Some(&mask), None, rows_kept, false).to_kind(kind).to(Device::Cpu);
            for (j, &r) in chunk.iter().enumerate() {
                let len = match (settings.first_token_only, fixed) {
                    (true, _) => 1,
                    (false, Some(width)) => width,
                    (false, None) => rows[r].len(),
                };
                // A copy of its own: a view (`contiguous` of a leading slice is one) would keep
                // the whole batch's states alive as long as the row's.
                sink(r, states.get(j as i64).narrow(0, 0, len as i64).copy())?;
            }
        }
        Ok(())
    })
}

/// The bytes of a host tensor.
pub fn tensor_bytes(state: &Tensor) -> Vec<u8> {
    let mut bytes = vec![0u8; state.numel() * state.kind().elt_size_in_bytes()];
    state.copy_data_u8(&mut bytes, state.numel());
    bytes
}

/// The states of `encode` outputs: per output its states file and index.
pub struct StoredStates {
    pub hidden: i64,
    pub fp16: bool,
    pub shards: Vec<(File, Vec<IndexRecord>)>,
}

impl EncoderCache {
    /// Runs the encoder once (inference mode) over every distinct conversation of `items`.
    pub fn build(encoder: &Encoder, items: &[&Items], hidden: i64, settings: &CacheSettings) -> Result<EncoderCache> {
        let fixed = items.iter().find_map(|i| i.width);
        let rows = distinct(items.iter().flat_map(|i| i.ids.iter()));
        let kind = if settings.fp16 { Kind::Half } else { Kind::Float };
        let mut cache = EncoderCache {
            slot: rows.iter().enumerate().map(|(i, ids)| (key(ids), i)).collect(),
            entries: (0..rows.len()).map(|_| Entry::File(0, 0, 0)).collect(),
            files: Vec::new(),
            spill: None,
            spilled_bytes: 0,
            hidden,
            kind,
            opened: false,
        };
        let mut in_memory = 0u64;
        let started = std::time::Instant::now();
        encode_each(encoder, &rows, fixed, settings, |r, state| {
            let bytes = (state.size()[0] * hidden) as u64 * kind.elt_size_in_bytes() as u64;
            cache.entries[r] = if in_memory + bytes <= settings.memory_bytes {
                in_memory += bytes;
                Entry::Memory(state)
            } else {
                cache.spill_state(&state, settings.scratch)?
            };
            Ok(())
        })?;
        tracing::info!(
            conversations = cache.entries.len(),
            memory_mib = in_memory / (1 << 20),
            spilled_mib = cache.spilled_bytes / (1 << 20),
            seconds = started.elapsed().as_secs_f64(),
            "frozen-encoder cache built"
        );
        Ok(cache)
    }

    /// The states of `encode` outputs, read from their files per batch.
    pub fn open(stored: StoredStates) -> EncoderCache {
        let mut cache = EncoderCache {
            slot: HashMap::new(),
            entries: Vec::new(),
            files: Vec::with_capacity(stored.shards.len()),
            spill: None,
            spilled_bytes: 0,
            hidden: stored.hidden,
            kind: if stored.fp16 { Kind::Half } else { Kind::Float },
            opened: true,
        };
        for (file, index) in stored.shards {
            let f = cache.files.len();
            cache.files.push(file);
            for record in index {
                cache.slot.entry(record.key).or_insert(cache.entries.len());
                cache.entries.push(Entry::File(f, record.offset, record.tokens as usize));
            }
        }
        cache
    }

    /// Checks that every conversation of `items` has states here.
    pub fn check_covers(&self, items: &Items, what: &str) -> Result<()> {
        match items.ids.iter().position(|ids| !self.slot.contains_key(&key(ids))) {
            None => Ok(()),
            Some(i) => Err(Error::input(format!(
                "the encode outputs have no states for item {i} of {what} ({} tokens): they were made from other data, another model or other max_length/truncation settings",
                items.ids[i].len()
            ))),
        }
    }

    fn spill_state(&mut self, state: &Tensor, scratch: &Path) -> Result<Entry> {
        let f = match self.spill {
            Some(f) => f,
            None => {
                std::fs::create_dir_all(scratch)?;
                self.files.push(tempfile::tempfile_in(scratch)?);
                self.spill = Some(self.files.len() - 1);
                self.files.len() - 1
            }
        };
        let bytes = tensor_bytes(state);
        self.files[f].write_all(&bytes)?;
        let entry = Entry::File(f, self.spilled_bytes, state.size()[0] as usize);
        self.spilled_bytes += bytes.len() as u64;
        Ok(entry)
    }

    /// Conversations whose states are here.
    pub fn conversations(&self) -> usize {
        self.entries.len()
    }

    /// Encoder passes made for the cache (none for states read from `encode` outputs).
    pub fn passes(&self) -> u64 {
        if self.opened {
            0
        } else {
            self.entries.len() as u64
        }
    }

    /// Bytes spilled to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    /// What the summary says of the cache.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "source": if self.opened { "encode" } else { "built" },
            "conversations": self.conversations(),
            "spilled_bytes": self.spilled_bytes(),
        })
    }

    fn state(&self, ids: &[i64]) -> Result<Tensor> {
        let slot =
            *self.slot.get(&key(ids)).ok_or_else(|| Error::Other("a conversation without cached states".into()))?;
        Ok(match &self.entries[slot] {
            Entry::Memory(t) => t.shallow_clone(),
            Entry::File(f, offset, len) => {
                let mut bytes = vec![0u8; *len * self.hidden as usize * self.kind.elt_size_in_bytes()];
                self.files[*f].read_exact_at(&mut bytes, *offset)?;
                Tensor::f_from_data_size(&bytes, &[*len as i64, self.hidden], self.kind)
                    .map_err(|e| Error::Other(format!("the encoder cache: {e}")))?
            }
        })
    }

    /// The cached states of `rows` of `items`, padded with zeros to the longest (a padding
    /// the masked adaptive layer and the pooler never read), as fp32
    /// [batch, tokens, hidden] on `device`, with their attention mask.
    pub fn batch(&self, items: &Items, rows: &[usize], device: Device) -> Result<(Tensor, Tensor)> {
        let states: Vec<Tensor> = rows.iter().map(|&r| self.state(&items.ids[r])).collect::<Result<_>>()?;
        let width = states.iter().map(|s| s.size()[0]).max().unwrap_or(1);
        let padded: Vec<Tensor> = states
            .iter()
            .map(|s| {
                let len = s.size()[0];
                if len == width {
                    s.shallow_clone()
                } else {
                    Tensor::cat(
                        &[s.shallow_clone(), s.new_zeros([width - len, self.hidden], (self.kind, Device::Cpu))],
                        0,
                    )
                }
            })
            .collect();
        // The mask marks the items' own tokens (fixed-width states carry their padding).
        let mask: Vec<i64> = rows
            .iter()
            .flat_map(|&r| {
                let len = items.ids[r].len().min(width as usize);
                std::iter::repeat_n(1i64, len).chain(std::iter::repeat_n(0, width as usize - len))
            })
            .collect();
        let hidden = Tensor::stack(&padded, 0).to_device(device).to_kind(Kind::Float);
        let mask = Tensor::from_slice(&mask).view([rows.len() as i64, width]).to(device);
        Ok((hidden, mask))
    }
}
