//! `_MANIFEST.json`: what a committed step output holds, and the fingerprint that makes
//! steps idempotent.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Store;
use crate::error::{Error, Result};

/// The name of the object that marks an output as complete. Written last.
pub const MANIFEST: &str = "_MANIFEST.json";

/// One file of a committed output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// One input of a step and the fingerprint it had when the step ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEntry {
    pub url: String,
    /// The manifest fingerprint of a committed output (or the identity of a plain file).
    pub fingerprint: String,
    /// For a committed output: the sha256 of its file list (names, sizes, sha256), so a
    /// rerun upstream that changes bytes changes every step downstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// The record of a committed step output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub step: String,
    pub fingerprint: String,
    /// `taft <version>` that wrote the output.
    pub program: String,
    pub config: serde_json::Value,
    pub inputs: Vec<InputEntry>,
    pub files: Vec<FileEntry>,
    /// What the step reports about its work (counts, metrics), for people and later steps.
    #[serde(default)]
    pub summary: serde_json::Value,
    pub started_at: String,
    pub finished_at: String,
}

impl Manifest {
    /// Reads the manifest of a committed output; `None` when there is none.
    pub async fn read(store: &Store) -> Result<Option<Manifest>> {
        let Some(bytes) = store.get(MANIFEST).await? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::input(format!("{}: not a valid manifest: {e}", store.url_of(MANIFEST))))
    }

    /// Reads the manifest of an output that a step needs as input: it must be committed.
    pub async fn require(store: &Store) -> Result<Manifest> {
        Manifest::read(store).await?.ok_or_else(|| {
            Error::input(format!(
                "{}: not a committed step output (no {MANIFEST}); run the step that makes it first",
                store.url()
            ))
        })
    }

    /// The entry for `path`, if the output holds it.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The sha256 of the file list: what the output holds, byte for byte, apart from its
    /// run logs (`metrics.jsonl`, `tensorboard/`), which carry wall-clock times. Two runs
    /// that make the same files thus give their readers the same fingerprints.
    pub fn content_digest(&self) -> String {
        let mut hasher = Sha256::new();
        for f in self.files.iter().filter(|f| !is_run_log(&f.path)) {
            hasher.update(format!("{}\t{}\t{}\n", f.path, f.size, f.sha256).as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// Whether a file of an output is a run log (times and progress, not results).
pub fn is_run_log(path: &str) -> bool {
    path == "metrics.jsonl" || path.starts_with("tensorboard/")
}

/// A committed step output read as an input: every file read is checked against the
/// manifest (size and sha256), so an output changed after its commit is never used.
#[derive(Debug, Clone)]
pub struct Committed {
    pub store: Store,
    pub manifest: Manifest,
}

impl Committed {
    /// Opens the committed output at `url` (no manifest: an input error).
    pub async fn open(url: &str) -> Result<Committed> {
        let store = Store::open(url)?;
        let manifest = Manifest::require(&store).await?;
        Ok(Committed { store, manifest })
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// Whether the output lists `name`.
    pub fn has(&self, name: &str) -> bool {
        self.manifest.file(name).is_some()
    }

    /// The manifest entry of a file of the output (an input error when it lists none).
    pub fn entry(&self, name: &str) -> Result<&FileEntry> {
        self.manifest.file(name).ok_or_else(|| {
            Error::input(format!(
                "{}: not in the output (its {MANIFEST} does not list it; made by `taft {}`)",
                self.store.url_of(name),
                self.manifest.step
            ))
        })
    }

    /// Checks bytes read of `name` (whole, or streamed through a hasher) against its
    /// manifest entry.
    pub fn verify(&self, name: &str, size: u64, sha256: &str) -> Result<()> {
        let entry = self.entry(name)?;
        if size != entry.size || sha256 != entry.sha256 {
            return Err(Error::input(format!(
                "{}: {size} bytes with sha256 {}, but {MANIFEST} lists {} bytes with sha256 {}: the output changed after it was committed; run the step that makes it again",
                self.store.url_of(name),
                &sha256[..sha256.len().min(16)],
                entry.size,
                &entry.sha256[..entry.sha256.len().min(16)]
            )));
        }
        Ok(())
    }

    /// Copies a file of the output to the local `path`, streaming through a hasher, and
    /// checks it against its manifest entry: memory stays at one buffer whatever the size.
    pub async fn download(&self, name: &str, path: &std::path::Path) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.entry(name)?;
        let mut reader = self.store.reader(name).await?;
        let mut file = tokio::fs::File::create(path).await?;
        let (mut hasher, mut size, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await?;
            size += n as u64;
        }
        file.flush().await?;
        self.verify(name, size, &hex::encode(hasher.finalize()))
    }

    /// Reads a file of the output and checks it against its manifest entry.
    pub async fn read(&self, name: &str) -> Result<Bytes> {
        let url = self.store.url_of(name);
        self.entry(name)?;
        let bytes = self
            .store
            .get(name)
            .await?
            .ok_or_else(|| Error::input(format!("{url}: listed in {MANIFEST} but missing")))?;
        self.verify(name, bytes.len() as u64, &hex::encode(Sha256::digest(&bytes)))?;
        Ok(bytes)
    }
}

/// The program version that goes into every fingerprint and manifest.
pub fn program() -> String {
    format!("taft {}", env!("CARGO_PKG_VERSION"))
}

/// The fingerprint of a step run: its name, resolved config, input fingerprints and the
/// program version. Two runs with the same fingerprint produce the same output.
///
/// The config's `out` and `inputs` keys are left out: where the output goes does not change
/// it, and inputs count through their own fingerprints (content, not location).
pub fn fingerprint(step: &str, config: &serde_json::Value, inputs: &[InputEntry]) -> String {
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("out");
        map.remove("inputs");
    }
    // serde_json's maps are ordered by key, so this serialisation is canonical.
    let canonical = serde_json::json!({
        "step": step,
        "config": config,
        "inputs": inputs.iter().map(|i| (&i.fingerprint, &i.content)).collect::<Vec<_>>(),
        "program": program(),
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The fingerprint of an input URL: the manifest fingerprint and content digest of a
/// committed step output, or, for a plain file, a hash of its size, modification time and
/// entity tag.
pub async fn input_fingerprint(url: &str) -> Result<InputEntry> {
    if let Ok(store) = Store::open(url) {
        if let Some(manifest) = Manifest::read(&store).await? {
            let content = Some(manifest.content_digest());
            return Ok(InputEntry { url: url.to_string(), fingerprint: manifest.fingerprint, content });
        }
        if store.local_path("").is_some() {
            // A local directory without a manifest: an unfinished (or foreign) output.
            Manifest::require(&store).await?;
        }
    }
    let (store, name) = Store::open_file(url)?;
    let meta = store.head(&name).await?.ok_or_else(|| Error::input(format!("{url}: no such file")))?;
    let identity = format!(
        "{}|{}|{}|{}",
        meta.size,
        meta.last_modified.to_rfc3339(),
        meta.e_tag.unwrap_or_default(),
        meta.version.unwrap_or_default()
    );
    Ok(InputEntry {
        url: url.to_string(),
        fingerprint: hex::encode(Sha256::digest(identity.as_bytes())),
        content: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_config_and_inputs_not_on_key_order() {
        let a = serde_json::json!({"x": 1, "y": {"b": 2, "a": 3}});
        let b: serde_json::Value = serde_json::from_str(r#"{"y": {"a": 3, "b": 2}, "x": 1}"#).unwrap();
        let input = |f: &str| InputEntry { url: "u".into(), fingerprint: f.into(), content: None };
        assert_eq!(fingerprint("prep", &a, &[]), fingerprint("prep", &b, &[]));
        assert_ne!(fingerprint("prep", &a, &[]), fingerprint("init", &a, &[]));
        assert_ne!(fingerprint("prep", &a, &[input("1")]), fingerprint("prep", &a, &[input("2")]));
        let with = |c: &str| InputEntry { content: Some(c.into()), ..input("1") };
        assert_ne!(fingerprint("prep", &a, &[with("x")]), fingerprint("prep", &a, &[with("y")]), "content counts");
        let c = serde_json::json!({"x": 2, "y": {"b": 2, "a": 3}});
        assert_ne!(fingerprint("prep", &a, &[]), fingerprint("prep", &c, &[]));
    }
}
