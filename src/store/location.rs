//! Where a URL points, as comparable segments, so that a step can refuse an output that is
//! the same as, inside, or above one of its inputs before it writes anything.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// A location: the store (`file`, `s3://bucket`, …) and the path segments inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    store: String,
    segments: Vec<String>,
}

impl Location {
    /// The location a URL or local path names. Local paths are made absolute, `.` and `..`
    /// resolved, and symbolic links of the existing part followed, so two spellings of one
    /// folder compare equal.
    pub fn of(url: &str) -> Location {
        let url = url.trim_end_matches('/');
        match url.split_once("://") {
            Some(("file", rest)) => local(Path::new(&format!("/{}", rest.trim_start_matches('/')))),
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                Location {
                    store: format!("{scheme}://{authority}"),
                    segments: path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                }
            }
            None => local(Path::new(if url.is_empty() { "/" } else { url })),
        }
    }

    /// How `self` (an output) relates to `other` (an input), when they overlap.
    pub fn overlap(&self, other: &Location) -> Option<&'static str> {
        if self.store != other.store {
            return None;
        }
        let common = self.segments.iter().zip(&other.segments).take_while(|(a, b)| a == b).count();
        match (common == self.segments.len(), common == other.segments.len()) {
            (true, true) => Some("is"),
            (true, false) => Some("contains"),
            (false, true) => Some("is inside"),
            (false, false) => None,
        }
    }
}

fn local(path: &Path) -> Location {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut clean = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    // Follow links of the part that exists; the rest is kept as written.
    let mut existing = clean.clone();
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(real) = existing.canonicalize() {
            break real;
        }
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent().map(Path::to_path_buf)) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent;
            }
            _ => break existing,
        }
    };
    let mut full = resolved;
    for name in rest.into_iter().rev() {
        full.push(name);
    }
    Location {
        store: "file".into(),
        segments: full
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect(),
    }
}

/// Refuses an output that is the same as, inside, or above one of `inputs`.
pub fn check_output(out: &str, inputs: &[String]) -> Result<()> {
    let target = Location::of(out);
    for input in inputs {
        if let Some(how) = target.overlap(&Location::of(input)) {
            return Err(Error::config(format!(
                "the output {out} {how} the input {input}: writing there would change what the step reads; choose another output"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_may_not_overlap_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/in.jsonl"), "x").unwrap();
        let input = vec![format!("{d}/data/in.jsonl")];
        for (out, how) in [
            (format!("{d}/data"), "contains"),
            (format!("{d}/data/./in.jsonl"), "is"),
            (format!("{d}/x/../data/in.jsonl/sub"), "is inside"),
            (format!("file://{d}/data"), "contains"),
        ] {
            let err = check_output(&out, &input).unwrap_err().to_string();
            assert!(err.contains(how), "{out}: {err}");
        }
        check_output(&format!("{d}/data2"), &input).unwrap();
        check_output(&format!("{d}/out"), &input).unwrap();
        // A link to the input's folder is the same folder.
        std::os::unix::fs::symlink(dir.path().join("data"), dir.path().join("alias")).unwrap();
        assert!(check_output(&format!("{d}/alias"), &input).is_err());
        // Object stores: by bucket and key.
        assert!(check_output("s3://b/runs", &["s3://b/runs/prep".to_string()]).is_err());
        check_output("s3://b/runs2", &["s3://b/runs/prep".to_string()]).unwrap();
        check_output("s3://c/runs", &["s3://b/runs".to_string()]).unwrap();
        assert!(check_output("s3://b", &["s3://b/in.jsonl".to_string()]).is_err());
    }
}
