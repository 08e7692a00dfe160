//! Shards of an input: steps that fan out over many machines (`predict`, `encode`) each
//! take the conversations of one shard.

use super::ConvId;

/// A shard of the input: `index` of `count` (0-based). Conversations go to shards by a hash
/// of their id, so the shards are disjoint and together the whole input, whatever the order
/// of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Parses `i/n` with 0 ≤ i < n.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let bad = || format!("shard `{s}`: expected i/n with 0 <= i < n (e.g. 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether the conversation `id` belongs to this shard.
    pub fn holds(&self, id: &ConvId) -> bool {
        use sha2::{Digest, Sha256};
        let key = match id {
            ConvId::Int(i) => format!("i:{i}"),
            ConvId::Str(s) => format!("s:{s}"),
        };
        let digest = Sha256::digest(key.as_bytes());
        let x = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        x % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_ids() {
        assert!(Shard::parse("4/4").is_err() && Shard::parse("1/0").is_err() && Shard::parse("x").is_err());
        let shards: Vec<Shard> = (0..3).map(|i| Shard::parse(&format!("{i}/3")).unwrap()).collect();
        let mut sizes = [0usize; 3];
        for n in 0..3000 {
            let ids = [ConvId::Int(n), ConvId::Str(format!("c{n}"))];
            for id in &ids {
                let owners: Vec<usize> = (0..3).filter(|&s| shards[s].holds(id)).collect();
                assert_eq!(owners.len(), 1, "{id}");
                sizes[owners[0]] += 1;
            }
        }
        // Balanced within a few percent.
        assert!(sizes.iter().all(|&s| (1800..2200).contains(&s)), "{sizes:?}");
    }
}
