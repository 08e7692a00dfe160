//! The atomic commit of a step's output, and what a step may delete.
//!
//! Protocol: an existing `_MANIFEST.json` with the same fingerprint means the output is up to
//! date (nothing is written). Otherwise the step takes the output's lease (one writer per
//! output, see [`super::lease`]), checks that the prefix holds only what taft wrote there,
//! aborts multipart uploads a killed run left, lists what it owns in the journal, then deletes
//! the old manifest (so a half-rewritten output never looks complete) and writes its files.
//! Every name is recorded in the journal
//! `_taft/pending.json` before its file is written, so a later run knows what a killed one
//! left. [`Output::commit`] removes what taft wrote earlier and the new output does not
//! list (stale files, `_work/` checkpoints, staging leftovers `NAME#N`), writes
//! `_MANIFEST.json` last, listing every file with its size and sha256, then drops the
//! journal and the lease. A step never deletes a file it did not write: a prefix holding
//! other files and no manifest is refused. A reader trusts an output only through its manifest.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use super::lease::Lease;
use super::manifest::{self, FileEntry, InputEntry, Manifest, MANIFEST};
use super::Store;
use crate::error::{Error, Result};

/// The names taft writes to a fresh output before its files (never part of a commit).
pub const JOURNAL: &str = "_taft/pending.json";
/// Records of multipart uploads in flight (remote stores).
pub const UPLOADS: &str = "_taft/uploads";
/// Checkpoints of a running step; removed by the commit.
pub const WORK: &str = "_work/";
/// Names taft reserves under an output prefix.
const RESERVED: [&str; 3] = [MANIFEST, "_taft/", WORK];
/// Foreign files quoted in the refusal (all are counted).
const QUOTED_FOREIGN: usize = 5;

/// Where `begin` found the output (made once per step: its size does not matter).
#[allow(clippy::large_enum_variant)]
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
    /// Every name taft wrote at this prefix and may delete: the old manifest's files, the
    /// journal's (a killed run's), and this run's.
    owned: BTreeSet<String>,
    lease: Lease,
    force: bool,
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
        if let Some(existing) = up_to_date(&store, &fingerprint, force).await? {
            return Ok(Begin::UpToDate(existing));
        }
        let lease = Lease::acquire(&store, step).await?;
        match claim(&store, &fingerprint, force).await {
            Ok(Claim::UpToDate(existing)) => {
                // Committed by the run that held the lease before us.
                lease.release().await;
                Ok(Begin::UpToDate(*existing))
            }
            Ok(Claim::Owned(owned)) => Ok(Begin::Fresh(Output {
                store: store.journal_uploads(UPLOADS),
                step: step.to_string(),
                fingerprint,
                config,
                inputs,
                files: Vec::new(),
                owned,
                lease,
                force,
                started_at: SystemTime::now(),
            })),
            Err(e) => {
                lease.release().await;
                Err(e)
            }
        }
    }

    /// The prefix the output is written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The fingerprint the manifest will carry.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether the run was forced (`--force`): checkpoints under `_work/` are not resumed.
    pub fn forced(&self) -> bool {
        self.force
    }

    /// Records `name` in the journal before its file is written.
    async fn own(&mut self, name: &str) -> Result<()> {
        check_name(name)?;
        if self.owned.insert(name.to_string()) {
            write_journal(&self.store, &self.owned).await?;
        }
        Ok(())
    }

    /// Writes a whole file of the output.
    pub async fn put(&mut self, name: &str, bytes: Bytes) -> Result<()> {
        self.own(name).await?;
        let entry =
            FileEntry { path: name.to_string(), size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) };
        self.store.put(name, bytes).await?;
        self.record(entry);
        Ok(())
    }

    /// Copies an open local file into a file of the output, streaming: memory stays at the
    /// writer's buffer whatever the file's size (model weights run to hundreds of MB).
    pub async fn put_file(&mut self, name: &str, file: std::fs::File) -> Result<()> {
        let mut file = tokio::fs::File::from_std(file);
        let mut writer = self.create(name).await?;
        tokio::io::copy(&mut file, &mut writer).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut writer).await?;
        self.record(writer.entry());
        Ok(())
    }

    /// A streaming writer for a file of the output; hand its [`HashingWriter::entry`] to
    /// [`Output::record`] once it is shut down.
    pub async fn create(&mut self, name: &str) -> Result<HashingWriter<object_store::buffered::BufWriter>> {
        self.own(name).await?;
        Ok(HashingWriter::new(name, self.store.writer(name)))
    }

    /// Records a file written through [`Output::create`].
    pub fn record(&mut self, entry: FileEntry) {
        self.files.retain(|f| f.path != entry.path);
        self.files.push(entry);
    }

    /// Gives the output up after a failure: nothing is committed; the lease is released.
    pub async fn abandon(self) {
        self.lease.release().await;
    }

    /// Removes what taft wrote here earlier and the output does not list, and writes the
    /// manifest, last.
    pub async fn commit(mut self, summary: serde_json::Value) -> Result<Manifest> {
        self.lease.check()?;
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        let keep: BTreeSet<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        for name in &self.owned {
            if !keep.contains(name.as_str()) {
                self.store.delete(name).await?;
            }
        }
        for (name, _) in self.store.list().await? {
            let leftover =
                staging_of(&name).is_some_and(|base| self.owned.contains(base) || base.starts_with("_taft/"));
            if name.starts_with(WORK) || leftover {
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
        self.lease.check()?;
        self.store.put(MANIFEST, Bytes::from(json)).await?;
        self.store.delete(JOURNAL).await?;
        self.lease.release().await;
        Ok(manifest)
    }
}

/// The committed manifest when it has `fingerprint` (and the run is not forced).
async fn up_to_date(store: &Store, fingerprint: &str, force: bool) -> Result<Option<Manifest>> {
    if force {
        return Ok(None);
    }
    match Manifest::read(store).await {
        Ok(Some(m)) if m.fingerprint == fingerprint => Ok(Some(m)),
        Ok(_) | Err(Error::Input(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

enum Claim {
    UpToDate(Box<Manifest>),
    Owned(BTreeSet<String>),
}

/// Under the lease: what taft owns at the prefix, after checking that nothing else is there,
/// aborting leftover uploads and removing the old manifest.
async fn claim(store: &Store, fingerprint: &str, force: bool) -> Result<Claim> {
    let (existing, unreadable) = match Manifest::read(store).await {
        Ok(m) => (m, false),
        Err(Error::Input(msg)) => {
            tracing::warn!(%msg, "the output's manifest is unreadable: its files count as foreign");
            (None, true)
        }
        Err(e) => return Err(e),
    };
    if let Some(m) = &existing {
        if m.fingerprint == fingerprint && !force {
            return Ok(Claim::UpToDate(Box::new(m.clone())));
        }
    }
    let mut owned: BTreeSet<String> = existing.iter().flat_map(|m| m.files.iter().map(|f| f.path.clone())).collect();
    owned.extend(read_journal(store).await?);
    let foreign: Vec<String> = store
        .list()
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| {
            !RESERVED.iter().any(|r| name == r || (r.ends_with('/') && name.starts_with(r)))
                && !owned.contains(name)
                && !staging_of(name).is_some_and(|base| owned.contains(base))
        })
        .collect();
    if !foreign.is_empty() && existing.is_none() {
        let quoted: Vec<&str> = foreign.iter().take(QUOTED_FOREIGN).map(String::as_str).collect();
        let more = foreign.len().saturating_sub(QUOTED_FOREIGN);
        return Err(Error::input(format!(
            "{}: holds {} file(s) that taft did not write ({}{}) and {}: not a taft output; give an empty or new output prefix",
            store.url(),
            foreign.len(),
            quoted.join(", "),
            if more > 0 { format!(", … and {more} more") } else { String::new() },
            if unreadable { format!("a {MANIFEST} that does not parse") } else { format!("no {MANIFEST}") }
        )));
    }
    if !foreign.is_empty() {
        tracing::info!(files = foreign.len(), "the output prefix holds files taft did not write: they are left alone");
    }
    let aborted = store.abort_recorded_uploads(UPLOADS).await?;
    if aborted > 0 {
        tracing::info!(aborted, "aborted multipart uploads an earlier run left");
    }
    // The journal first: a run killed between the two steps leaves the old files listed (as
    // taft's), never a prefix of unlisted files without a manifest.
    write_journal(store, &owned).await?;
    if existing.is_some() {
        store.delete(MANIFEST).await?;
    }
    Ok(Claim::Owned(owned))
}

async fn read_journal(store: &Store) -> Result<Vec<String>> {
    let Some(bytes) = store.get(JOURNAL).await? else { return Ok(Vec::new()) };
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::input(format!("{}: not a taft journal: {e}", store.url_of(JOURNAL))))
}

async fn write_journal(store: &Store, owned: &BTreeSet<String>) -> Result<()> {
    store.put(JOURNAL, Bytes::from(serde_json::to_vec(owned)?)).await
}

/// The name a staging file (`NAME#N`, an unfinished local write) stands for.
fn staging_of(name: &str) -> Option<&str> {
    let (base, suffix) = name.rsplit_once('#')?;
    (!suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

fn check_name(name: &str) -> Result<()> {
    super::check_key(name)?;
    if RESERVED.iter().any(|r| name == *r || (r.ends_with('/') && name.starts_with(r))) {
        return Err(Error::Other(format!("{name}: reserved for taft's own files under an output")));
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

    async fn fresh(store: &Store, config: serde_json::Value) -> Result<Output> {
        match Output::begin(store.clone(), "prep", config, vec![], false).await? {
            Begin::Fresh(out) => Ok(out),
            Begin::UpToDate(_) => panic!("expected a fresh output"),
        }
    }

    fn names(list: Vec<(String, u64)>) -> Vec<String> {
        list.into_iter().map(|(n, _)| n).collect()
    }

    #[tokio::test]
    async fn commit_writes_manifest_last_and_deletes_only_what_taft_wrote() {
        commit_deletes_only_what_taft_wrote(Store::create("memory://unit-commit/out").unwrap()).await;
        let dir = tempfile::tempdir().unwrap();
        commit_deletes_only_what_taft_wrote(Store::create(dir.path().to_str().unwrap()).unwrap()).await;
    }

    async fn commit_deletes_only_what_taft_wrote(store: Store) {
        // A prefix holding files taft did not write is refused, and left as it was.
        store.put("notes.txt", Bytes::from_static(b"mine")).await.unwrap();
        let err = fresh(&store, serde_json::json!({"a": 1})).await.err().expect("refused").to_string();
        assert!(err.contains("notes.txt") && err.contains("taft did not write"), "{err}");
        assert_eq!(names(store.list().await.unwrap()), ["notes.txt"]);
        store.delete("notes.txt").await.unwrap();

        // A killed run leaves files, a checkpoint and a staging file behind; its journal
        // tells the next run they are taft's.
        let mut killed = fresh(&store, serde_json::json!({"a": 0})).await.unwrap();
        killed.put("old.txt", Bytes::from_static(b"old")).await.unwrap();
        store.put("_work/ckpt", Bytes::from_static(b"ckpt")).await.unwrap();
        if let Some(dir) = store.local_path("") {
            // An unfinished local write (object_store's staging file).
            std::fs::write(dir.join("old.txt#2"), b"partial").unwrap();
        }
        killed.abandon().await;

        let config = serde_json::json!({"a": 1});
        let mut out = fresh(&store, config.clone()).await.unwrap();
        out.put("a.txt", Bytes::from_static(b"hello")).await.unwrap();
        let mut w = out.create("b/c.txt").await.unwrap();
        w.write_all(b"streamed").await.unwrap();
        w.shutdown().await.unwrap();
        out.record(w.entry());
        assert!(out.create("_work/x").await.is_err() && out.put(MANIFEST, Bytes::new()).await.is_err());
        assert!(store.get(MANIFEST).await.unwrap().is_none());
        let manifest = out.commit(serde_json::json!({})).await.unwrap();
        assert_eq!(names(store.list().await.unwrap()), ["_MANIFEST.json", "a.txt", "b/c.txt"]);
        assert_eq!(manifest.files[0].sha256, hex::encode(Sha256::digest(b"hello")));
        assert_eq!(manifest.files[1].size, 8);
        assert_eq!(manifest.files[1].sha256, hex::encode(Sha256::digest(b"streamed")));

        // Same fingerprint: up to date. A file someone adds beside a committed output is
        // left alone by the next run, which removes only the old output's files.
        assert!(matches!(
            Output::begin(store.clone(), "prep", config, vec![], false).await.unwrap(),
            Begin::UpToDate(_)
        ));
        store.put("added-by-hand.txt", Bytes::from_static(b"x")).await.unwrap();
        let mut out = fresh(&store, serde_json::json!({"a": 2})).await.unwrap();
        assert!(store.get(MANIFEST).await.unwrap().is_none(), "the old manifest goes first");
        out.put("a.txt", Bytes::from_static(b"again")).await.unwrap();
        out.commit(serde_json::json!({})).await.unwrap();
        assert_eq!(names(store.list().await.unwrap()), ["_MANIFEST.json", "a.txt", "added-by-hand.txt"]);
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_while_the_first_holds_the_output() {
        let store = Store::create("memory://unit-commit/busy").unwrap();
        let first = fresh(&store, serde_json::json!({})).await.unwrap();
        let err = fresh(&store, serde_json::json!({})).await.err().expect("busy");
        assert_eq!(err.exit_kind(), crate::error::ExitKind::Transient);
        assert!(err.to_string().contains("another run is writing this output"), "{err}");
        first.commit(serde_json::json!({})).await.unwrap();
        // Committed meanwhile with this fingerprint: up to date, not busy.
        assert!(matches!(
            Output::begin(store, "prep", serde_json::json!({}), vec![], false).await.unwrap(),
            Begin::UpToDate(_)
        ));
    }

    #[test]
    fn staging_names() {
        assert_eq!(staging_of("a/b.parquet#12"), Some("a/b.parquet"));
        assert_eq!(staging_of("a#b"), None);
        assert_eq!(staging_of("a#"), None);
    }
}
