//! The frozen-encoder cache (`encoder_cache: true`, methods taft and noadapt): with the
//! encoder frozen, its hidden states for a conversation are the same every epoch, so they
//! are computed once, in inference mode, and only what lies above the encoder trains.
//!
//! - One encoder pass per distinct conversation (token ids), whatever the task or split.
//! - noadapt's pooler reads the first token only, so only that state is kept; taft's
//!   adaptive layer reads every token.
//! - States are kept as fp16 (or fp32) on the host up to a memory budget, past which they
//!   go to an unnamed file in the step's scratch folder (the output's `_work/` on local
//!   disk), read back per batch.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::heads::Classifier;
use crate::steps::training::Items;

/// Where one conversation's states are.
enum Entry {
    Memory(Tensor),
    /// Byte offset and token count in the spill file.
    Spilled(u64, usize),
}

/// The encoder's output for every conversation the step reads.
pub struct EncoderCache {
    slot: HashMap<Vec<i64>, usize>,
    entries: Vec<Entry>,
    spill: Option<File>,
    spilled_bytes: u64,
    hidden: i64,
    kind: Kind,
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

impl EncoderCache {
    /// Runs the encoder once (inference mode) over every distinct conversation of `items`,
    /// longest first, in batches.
    pub fn build(model: &Classifier, items: &[&Items], hidden: i64, settings: &CacheSettings) -> Result<EncoderCache> {
        // Fixed-width items (the unmasked adaptive layer) keep the encoder's states of their
        // padding too: what the layer attends must not depend on the rest of a batch.
        let fixed = items.iter().find_map(|i| i.width);
        let mut distinct: Vec<&Vec<i64>> = Vec::new();
        let mut slot = HashMap::new();
        for ids in items.iter().flat_map(|i| i.ids.iter()) {
            if !slot.contains_key(ids) {
                slot.insert(ids.clone(), distinct.len());
                distinct.push(ids);
            }
        }
        let mut order: Vec<usize> = (0..distinct.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(distinct[i].len()));
        let kind = if settings.fp16 { Kind::Half } else { Kind::Float };
        let mut cache = EncoderCache {
            slot,
            entries: (0..distinct.len()).map(|_| Entry::Spilled(0, 0)).collect(),
            spill: None,
            spilled_bytes: 0,
            hidden,
            kind,
        };
        let mut in_memory = 0u64;
        let started = std::time::Instant::now();
        tch::no_grad(|| -> Result<()> {
            for rows in order.chunks(settings.batch_size.max(1)) {
                let width = distinct[rows[0]].len().max(fixed.unwrap_or(0));
                let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * width), Vec::new());
                for &r in rows {
                    let row = distinct[r];
                    ids.extend(row.iter().copied().chain(std::iter::repeat_n(settings.pad, width - row.len())));
                    mask.extend(std::iter::repeat_n(1i64, row.len()).chain(std::iter::repeat_n(0, width - row.len())));
                }
                let shape = [rows.len() as i64, width as i64];
                let ids = Tensor::from_slice(&ids).view(shape).to(settings.device);
                let mask = Tensor::from_slice(&mask).view(shape).to(settings.device);
                let states = model.encoder.forward_t(&ids, &mask, None, false).to_kind(kind).to(Device::Cpu);
                for (j, &r) in rows.iter().enumerate() {
                    let len = match (settings.first_token_only, fixed) {
                        (true, _) => 1,
                        (false, Some(width)) => width,
                        (false, None) => distinct[r].len(),
                    };
                    let state = states.get(j as i64).narrow(0, 0, len as i64).contiguous();
                    let bytes = (len as i64 * hidden) as u64 * kind.elt_size_in_bytes() as u64;
                    cache.entries[r] = if in_memory + bytes <= settings.memory_bytes {
                        in_memory += bytes;
                        Entry::Memory(state)
                    } else {
                        cache.spill_state(&state, len, settings.scratch)?
                    };
                }
            }
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

    fn spill_state(&mut self, state: &Tensor, len: usize, scratch: &Path) -> Result<Entry> {
        if self.spill.is_none() {
            std::fs::create_dir_all(scratch)?;
            self.spill = Some(tempfile::tempfile_in(scratch)?);
        }
        let file = self.spill.as_mut().expect("opened above");
        let mut bytes = vec![0u8; state.numel() * self.kind.elt_size_in_bytes()];
        state.copy_data_u8(&mut bytes, state.numel());
        file.write_all(&bytes)?;
        let entry = Entry::Spilled(self.spilled_bytes, len);
        self.spilled_bytes += bytes.len() as u64;
        Ok(entry)
    }

    /// Conversations whose states are cached (= encoder passes made).
    pub fn conversations(&self) -> usize {
        self.entries.len()
    }

    /// Bytes spilled to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    fn state(&self, ids: &[i64]) -> Result<Tensor> {
        let slot = self.slot[ids];
        Ok(match &self.entries[slot] {
            Entry::Memory(t) => t.shallow_clone(),
            Entry::Spilled(offset, len) => {
                let mut bytes = vec![0u8; *len * self.hidden as usize * self.kind.elt_size_in_bytes()];
                self.spill.as_ref().expect("a spill file").read_exact_at(&mut bytes, *offset)?;
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
