//! The atomic commit of a step's output.
//!
//! Protocol: at the start, an existing `_MANIFEST.json` with the same fingerprint means the
//! output is up to date; any other manifest is deleted first, so a half-rewritten output never
//! looks complete. The step then writes its files under the prefix (each object is replaced
//! atomically by the store), and [`Output::commit`] removes everything the new output does not
//! list (stale files, the `_work/` checkpoints) and writes `_MANIFEST.json` last, listing every
//! file with its size and sha256. A reader trusts an output only through its manifest.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use super::manifest::{self, FileEntry, InputEntry, Manifest, MANIFEST};
use super::Store;
use crate::error::{Error, Result};

/// Where `begin` found the output.
pub enum Begin {
    /// A manifest with the same fingerprint is there: nothing to do.
    UpToDate(Manifest),
    /// The step must run and commit through this handle.
    Fresh(Output),
}

/// An output being written; see the module docs for the protocol.
pub struct Output {
    store: Store,
    step: String,
    fingerprint: String,
    config: serde_json::Value,
    inputs: Vec<InputEntry>,
    files: Vec<FileEntry>,
    started_at: SystemTime,
}

impl Output {
    /// Starts (or skips) writing the output of `step` to `store`.
    pub async fn begin(
        store: Store,
        step: &str,
        config: serde_json::Value,
        inputs: Vec<InputEntry>,
        force: bool,
    ) -> Result<Begin> {
        let fingerprint = manifest::fingerprint(step, &config, &inputs);
        // A manifest that does not parse is treated like a stale one and replaced; a store
        // that cannot be reached is an error (exit code 3).
        let existing = match Manifest::read(&store).await {
            Ok(existing) => existing,
            Err(Error::Input(msg)) => {
                tracing::warn!(%msg, "replacing an unreadable manifest");
                Some(Manifest::unreadable())
            }
            Err(e) => return Err(e),
        };
        if let Some(existing) = existing {
            if existing.fingerprint == fingerprint && !force {
                return Ok(Begin::UpToDate(existing));
            }
            store.delete(MANIFEST).await?;
        }
        Ok(Begin::Fresh(Output {
            store,
            step: step.to_string(),
            fingerprint,
            config,
            inputs,
            files: Vec::new(),
            started_at: SystemTime::now(),
        }))
    }

    /// The prefix the output is written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The fingerprint the manifest will carry.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Writes a whole file of the output.
    pub async fn put(&mut self, name: &str, bytes: Bytes) -> Result<()> {
        check_name(name)?;
        let entry =
            FileEntry { path: name.to_string(), size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) };
        self.store.put(name, bytes).await?;
        self.record(entry);
        Ok(())
    }

    /// A streaming writer for a file of the output; hand its [`HashingWriter::entry`] to
    /// [`Output::record`] once it is shut down.
    pub fn create(&self, name: &str) -> Result<HashingWriter<object_store::buffered::BufWriter>> {
        check_name(name)?;
        Ok(HashingWriter::new(name, self.store.writer(name)))
    }

    /// Records a file written through [`Output::create`].
    pub fn record(&mut self, entry: FileEntry) {
        self.files.retain(|f| f.path != entry.path);
        self.files.push(entry);
    }

    /// Removes what the output does not list and writes the manifest, last.
    pub async fn commit(mut self, summary: serde_json::Value) -> Result<Manifest> {
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        for (name, _) in self.store.list().await? {
            if name != MANIFEST && self.files.iter().all(|f| f.path != name) {
                self.store.delete(&name).await?;
            }
        }
        let manifest = Manifest {
            step: self.step,
            fingerprint: self.fingerprint,
            program: manifest::program(),
            config: self.config,
            inputs: self.inputs,
            files: self.files,
            summary,
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            finished_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let json = serde_json::to_vec_pretty(&manifest)?;
        self.store.put(MANIFEST, Bytes::from(json)).await?;
        Ok(manifest)
    }
}

fn check_name(name: &str) -> Result<()> {
    super::check_key(name)?;
    if name == MANIFEST {
        return Err(Error::Other(format!("{MANIFEST} is written by the commit only")));
    }
    Ok(())
}

/// An `AsyncWrite` that counts and hashes what passes through it.
pub struct HashingWriter<W> {
    name: String,
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(name: &str, inner: W) -> Self {
        HashingWriter { name: name.to_string(), inner, hasher: Sha256::new(), size: 0 }
    }

    /// The manifest entry for everything written so far.
    pub fn entry(&self) -> FileEntry {
        FileEntry { path: self.name.clone(), size: self.size, sha256: hex::encode(self.hasher.clone().finalize()) }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.hasher.update(&buf[..n]);
            this.size += n as u64;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn commit_writes_manifest_last_and_removes_stale_files() {
        let store = Store::create("memory://unit-commit/out").unwrap();
        store.put("stale.txt", Bytes::from_static(b"old")).await.unwrap();
        store.put("_work/ckpt", Bytes::from_static(b"ckpt")).await.unwrap();
        let config = serde_json::json!({"a": 1});
        let Begin::Fresh(mut out) = Output::begin(store.clone(), "prep", config.clone(), vec![], false).await.unwrap()
        else {
            panic!("nothing committed yet, so the output cannot be up to date")
        };
        out.put("a.txt", Bytes::from_static(b"hello")).await.unwrap();
        let mut w = out.create("b/c.txt").unwrap();
        w.write_all(b"streamed").await.unwrap();
        w.shutdown().await.unwrap();
        out.record(w.entry());
        assert!(store.get(MANIFEST).await.unwrap().is_none());
        let manifest = out.commit(serde_json::json!({})).await.unwrap();

        let names: Vec<String> = store.list().await.unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["_MANIFEST.json", "a.txt", "b/c.txt"]);
        assert_eq!(manifest.files[0].sha256, hex::encode(Sha256::digest(b"hello")));
        assert_eq!(manifest.files[1].size, 8);
        assert_eq!(manifest.files[1].sha256, hex::encode(Sha256::digest(b"streamed")));

        // Same fingerprint: up to date; a different config: the old manifest goes first.
        let again = Output::begin(store.clone(), "prep", config, vec![], false).await.unwrap();
        assert!(matches!(again, Begin::UpToDate(_)));
        let changed = Output::begin(store.clone(), "prep", serde_json::json!({"a": 2}), vec![], false).await.unwrap();
        assert!(matches!(changed, Begin::Fresh(_)));
        assert!(store.get(MANIFEST).await.unwrap().is_none());
    }
}
