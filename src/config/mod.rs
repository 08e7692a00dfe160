//! Step configs: strict YAML files, `--set key=value` overrides, and typed resolution with
//! errors that name the file, the key and the expected type.

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::error::{Error, Result};

/// A config document before it is resolved into a step's typed config.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// Where the document came from, for error messages (a file name or `workflow.yaml: step x`).
    pub source: String,
    pub value: Value,
}

impl RawConfig {
    /// An empty config (every field at its default).
    pub fn empty(source: impl Into<String>) -> Self {
        RawConfig { source: source.into(), value: Value::Mapping(Mapping::new()) }
    }

    /// Reads a YAML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::config(format!("config {}: {e}", path.display())))?;
        Self::from_yaml(&path.display().to_string(), &text)
    }

    /// Parses a YAML document; an empty document is an empty mapping.
    pub fn from_yaml(source: &str, text: &str) -> Result<Self> {
        let value: Value = serde_yaml::from_str(text).map_err(|e| Error::config(format!("config {source}: {e}")))?;
        let value = match value {
            Value::Null => Value::Mapping(Mapping::new()),
            Value::Mapping(m) => Value::Mapping(m),
            other => {
                return Err(Error::config(format!(
                    "config {source}: expected a mapping of keys to values, found {}",
                    kind(&other)
                )))
            }
        };
        Ok(RawConfig { source: source.to_string(), value })
    }

    /// Applies `key.path=value` overrides; the value is read as YAML (`3`, `true`, `[a, b]`),
    /// falling back to a plain string.
    pub fn apply_sets(&mut self, sets: &[String]) -> Result<()> {
        for set in sets {
            let (key, raw) =
                set.split_once('=').ok_or_else(|| Error::config(format!("--set {set}: expected key=value")))?;
            let value = serde_yaml::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.into()));
            self.set(key, value).map_err(|e| Error::config(format!("--set {set}: {e}")))?;
        }
        Ok(())
    }

    /// Sets a dotted key, creating intermediate mappings.
    pub fn set(&mut self, key: &str, value: Value) -> std::result::Result<(), String> {
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(format!("bad key `{key}`"));
        }
        let mut node = &mut self.value;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let map = match node {
                Value::Mapping(map) => map,
                Value::Null => {
                    *node = Value::Mapping(Mapping::new());
                    let Value::Mapping(map) = node else { unreachable!() };
                    map
                }
                other => return Err(format!("`{}` is {}, not a mapping", parts[..i].join("."), kind(other))),
            };
            let k = Value::String(part.to_string());
            if i + 1 == parts.len() {
                map.insert(k, value);
                return Ok(());
            }
            node = map.entry(k).or_insert(Value::Null);
        }
        Ok(())
    }

    /// Resolves the document into a typed config. Unknown keys and wrong types are errors
    /// naming the source, the key and what was expected.
    /// Lays `defaults` (a YAML mapping) beneath this document: keys the document lacks are
    /// taken from the defaults, nested mappings are merged key by key.
    pub fn with_defaults(&self, defaults: &str) -> Result<RawConfig> {
        let defaults: Value = serde_yaml::from_str(defaults)
            .map_err(|e| Error::Other(format!("built-in defaults of {}: {e}", self.source)))?;
        let mut value = defaults;
        merge(&mut value, self.value.clone());
        Ok(RawConfig { source: self.source.clone(), value })
    }

    pub fn resolve<T: DeserializeOwned>(&self) -> Result<T> {
        serde_path_to_error::deserialize(self.value.clone()).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." { String::new() } else { format!(" key `{path}`:") };
            Error::config(format!("config {}:{at} {}", self.source, e.inner()))
        })
    }
}

/// Merges `top` over `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Mapping(base), Value::Mapping(top)) => {
            for (k, v) in top {
                match base.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, top) => *base = top,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        seed: u64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[test]
    fn sets_override_nested_keys_with_yaml_values() {
        let mut raw = RawConfig::from_yaml("a.yaml", "name: x\n").unwrap();
        raw.apply_sets(&["inner.seed=7".into(), "name=y z".into()]).unwrap();
        let cfg: Cfg = raw.resolve().unwrap();
        assert_eq!(cfg, Cfg { name: "y z".into(), inner: Some(Inner { seed: 7 }) });
    }

    #[test]
    fn errors_name_source_key_and_expected_type() {
        let raw = RawConfig::from_yaml("a.yaml", "inner:\n  seed: abc\n").unwrap();
        let err = raw.resolve::<Cfg>().unwrap_err().to_string();
        assert!(err.contains("a.yaml") && err.contains("inner.seed") && err.contains("expected u64"), "{err}");
        let raw = RawConfig::from_yaml("b.yaml", "nmae: x\n").unwrap();
        let err = raw.resolve::<Cfg>().unwrap_err().to_string();
        assert!(err.contains("b.yaml") && err.contains("unknown field `nmae`"), "{err}");
        let mut raw = RawConfig::empty("c");
        assert!(raw.apply_sets(&["noequals".into()]).is_err());
        assert!(raw.apply_sets(&["name.x=1".into(), "name.x.y=2".into()]).is_err());
    }

    #[test]
    fn defaults_fill_missing_keys_at_any_depth() {
        let raw = RawConfig::from_yaml("d.yaml", "inner:\n  seed: 3\n").unwrap();
        let merged = raw.with_defaults("name: base\ninner:\n  seed: 1\n").unwrap();
        let cfg: Cfg = merged.resolve().unwrap();
        assert_eq!(cfg, Cfg { name: "base".into(), inner: Some(Inner { seed: 3 }) });
        assert_eq!(merged.source, "d.yaml");
    }
}
