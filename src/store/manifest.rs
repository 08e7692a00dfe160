//! `_MANIFEST.json`: what a committed step output holds, and the fingerprint that makes
//! steps idempotent.

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
    pub fingerprint: String,
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

    /// A placeholder for a manifest that exists but does not parse (never up to date).
    pub(crate) fn unreadable() -> Manifest {
        Manifest {
            step: String::new(),
            fingerprint: String::new(),
            program: String::new(),
            config: serde_json::Value::Null,
            inputs: Vec::new(),
            files: Vec::new(),
            summary: serde_json::Value::Null,
            started_at: String::new(),
            finished_at: String::new(),
        }
    }

    /// The entry for `path`, if the output holds it.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
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
        "inputs": inputs.iter().map(|i| &i.fingerprint).collect::<Vec<_>>(),
        "program": program(),
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The fingerprint of an input URL: the manifest fingerprint of a committed step output,
/// or, for a plain file, a hash of its size, modification time and entity tag.
pub async fn input_fingerprint(url: &str) -> Result<InputEntry> {
    if let Ok(store) = Store::open(url) {
        if let Some(manifest) = Manifest::read(&store).await? {
            return Ok(InputEntry { url: url.to_string(), fingerprint: manifest.fingerprint });
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
    Ok(InputEntry { url: url.to_string(), fingerprint: hex::encode(Sha256::digest(identity.as_bytes())) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_config_and_inputs_not_on_key_order() {
        let a = serde_json::json!({"x": 1, "y": {"b": 2, "a": 3}});
        let b: serde_json::Value = serde_json::from_str(r#"{"y": {"a": 3, "b": 2}, "x": 1}"#).unwrap();
        let input = |f: &str| InputEntry { url: "u".into(), fingerprint: f.into() };
        assert_eq!(fingerprint("prep", &a, &[]), fingerprint("prep", &b, &[]));
        assert_ne!(fingerprint("prep", &a, &[]), fingerprint("init", &a, &[]));
        assert_ne!(fingerprint("prep", &a, &[input("1")]), fingerprint("prep", &a, &[input("2")]));
        let c = serde_json::json!({"x": 2, "y": {"b": 2, "a": 3}});
        assert_ne!(fingerprint("prep", &a, &[]), fingerprint("prep", &c, &[]));
    }
}
