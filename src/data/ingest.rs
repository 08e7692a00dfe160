//! JSON-lines ingestion: streaming line reader (plain or gzip) and the validation of one
//! record against SPEC §1, with a message per problem naming the field.

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::{ConvId, Conversation, Split, Utterance};
use super::{MAX_AUTHOR, MAX_EMOTION, MAX_SATISFACTION, MAX_STATUS, PAD_TEXT};
use crate::error::{Error, Result};
use crate::store::Store;

/// Reads an input file line by line, decompressing `.gz` files, in bounded memory.
pub struct LineReader {
    url: String,
    inner: Box<dyn AsyncBufRead + Send + Unpin>,
    gzip: bool,
    line: u64,
}

impl LineReader {
    pub async fn open(url: &str) -> Result<Self> {
        let (store, name) = Store::open_file(url)?;
        let raw: Box<dyn AsyncBufRead + Send + Unpin> = match store.local_path(&name) {
            // Large reads of a local file beat the store's small chunks.
            Some(path) => {
                let file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::input(format!("{url}: no such file")),
                    _ => Error::input(format!("{url}: {e}")),
                })?;
                Box::new(BufReader::with_capacity(1 << 20, file))
            }
            None => Box::new(store.reader(&name).await?),
        };
        let gzip = name.ends_with(".gz");
        let inner: Box<dyn AsyncBufRead + Send + Unpin> = if gzip {
            let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(raw);
            decoder.multiple_members(true);
            Box::new(BufReader::with_capacity(1 << 16, decoder))
        } else {
            Box::new(raw)
        };
        Ok(LineReader { url: url.to_string(), inner, gzip, line: 0 })
    }

    /// Reads the next line into `buf` (without the line ending), keeping at most `max` bytes
    /// of it in memory; returns its 1-based number and whole length (a line longer than
    /// `max` is read to its end but not kept), or `None` at the end of the input.
    pub async fn next_line(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<Option<(u64, u64)>> {
        buf.clear();
        let mut length: u64 = 0;
        let mut any = false;
        loop {
            let available = self.inner.fill_buf().await.map_err(|e| read_error(&self.url, self.gzip, e))?;
            if available.is_empty() {
                break;
            }
            any = true;
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            length += chunk.len() as u64;
            let room = max.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = done.unwrap_or(chunk.len());
            self.inner.consume(used);
            if done.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        if length as usize <= max {
            while matches!(buf.last(), Some(b'\r')) {
                buf.pop();
                length -= 1;
            }
        }
        self.line += 1;
        Ok(Some((self.line, length)))
    }
}

/// A failed read: the store's error (maybe transient), or a corrupt compressed stream.
fn read_error(url: &str, gzip: bool, e: std::io::Error) -> Error {
    let kind = e.kind();
    let message = e.to_string();
    match e.into_inner().map(|inner| inner.downcast::<object_store::Error>()) {
        Some(Ok(store_err)) => Error::store("read", url, *store_err),
        _ if gzip => Error::input(format!("{url}: cannot decompress: {message}")),
        _ => Error::Io(std::io::Error::new(kind, format!("{url}: {message}"))),
    }
}

/// Parses and validates one JSON line. On failure returns every problem found, each
/// naming its field.
pub fn parse_record(line: &[u8]) -> std::result::Result<Conversation, Vec<String>> {
    let text = std::str::from_utf8(line).map_err(|e| vec![format!("not valid UTF-8 (at byte {})", e.valid_up_to())])?;
    // Valid records take the typed path; anything it does not accept goes through the
    // field-by-field path, which finds and names every problem.
    match fast_record(text) {
        Some(conversation) => Ok(conversation),
        None => checked_record(text),
    }
}

/// A record as the typed path reads it.
#[derive(serde::Deserialize)]
struct FastRecord<'a> {
    id: Value,
    #[serde(borrow)]
    split: std::borrow::Cow<'a, str>,
    #[serde(default)]
    status: Option<i64>,
    #[serde(default)]
    satisfaction: Option<i64>,
    texts: Vec<String>,
    authors: Vec<i64>,
    #[serde(default)]
    labels: Option<Vec<i64>>,
}

fn fast_record(text: &str) -> Option<Conversation> {
    let r: FastRecord = serde_json::from_str(text).ok()?;
    let id = match r.id {
        Value::Number(n) => ConvId::Int(n.as_i64()?),
        Value::String(s) if !s.is_empty() => ConvId::Str(s),
        _ => return None,
    };
    let split = Split::parse(&r.split)?;
    let small = |v: i64, max: u8| (0..=i64::from(max)).contains(&v).then_some(v as u8);
    let label = |v: Option<i64>, max: u8| match v {
        Some(v) => small(v, max).map(Some),
        None if split.is_labeled() => None,
        None => Some(None),
    };
    let status = label(r.status, MAX_STATUS)?;
    let satisfaction = label(r.satisfaction, MAX_SATISFACTION)?;
    // The emotion labels are optional (the method does not use them): absent or null, 0.
    let labels = r.labels.unwrap_or_else(|| vec![0; r.texts.len()]);
    if r.texts.len() != r.authors.len() || r.texts.len() != labels.len() {
        return None;
    }
    let mut utterances = Vec::with_capacity(r.texts.len());
    for ((text, author), label) in r.texts.into_iter().zip(r.authors).zip(labels) {
        let (speaker, label) = (small(author, MAX_AUTHOR)?, small(label, MAX_EMOTION)?);
        if text != PAD_TEXT && speaker != 0 {
            utterances.push(Utterance { text, speaker, label });
        }
    }
    if utterances.is_empty() {
        return None;
    }
    Some(Conversation { id, split, status, satisfaction, utterances })
}

fn checked_record(text: &str) -> std::result::Result<Conversation, Vec<String>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| vec![format!("not JSON: {} (column {})", strip_position(&e), e.column())])?;
    let Value::Object(obj) = value else {
        return Err(vec![format!("expected a JSON object, found {}", describe(&value))]);
    };
    let mut problems = Vec::new();
    let id = parse_id(&obj).map_err(|p| problems.push(p)).ok();
    let split = parse_split(&obj).map_err(|p| problems.push(p)).ok();
    let labeled = split.is_some_and(Split::is_labeled);
    let status = int_field(&obj, "status", MAX_STATUS, labeled).map_err(|p| problems.push(p)).ok();
    let satisfaction = int_field(&obj, "satisfaction", MAX_SATISFACTION, labeled).map_err(|p| problems.push(p)).ok();
    let texts = list_field(&obj, "texts", |v| v.as_str().map(str::to_string).ok_or("a string"), &mut problems);
    let authors = list_field(&obj, "authors", |v| small_int(v, MAX_AUTHOR), &mut problems);
    let labels = match obj.get("labels") {
        None | Some(Value::Null) => texts.as_ref().map(|t| vec![0; t.len()]),
        Some(_) => list_field(&obj, "labels", |v| small_int(v, MAX_EMOTION), &mut problems),
    };
    if let (Some(t), Some(a), Some(l)) = (&texts, &authors, &labels) {
        if t.len() != a.len() || t.len() != l.len() {
            problems.push(format!(
                "fields `texts`, `authors`, `labels` have different lengths ({}, {}, {})",
                t.len(),
                a.len(),
                l.len()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(id), Some(split), Some(status), Some(satisfaction), Some(texts), Some(authors), Some(labels)) =
        (id, split, status, satisfaction, texts, authors, labels)
    else {
        unreachable!("every field parsed or a problem was recorded")
    };
    // Padding utterances of the original data are dropped on ingestion (SPEC §1).
    let utterances: Vec<Utterance> = texts
        .into_iter()
        .zip(authors)
        .zip(labels)
        .filter(|((text, author), _)| text != PAD_TEXT && *author != 0)
        .map(|((text, speaker), label)| Utterance { text, speaker, label })
        .collect();
    if utterances.is_empty() {
        return Err(vec!["field `texts`: empty conversation: no utterances (after dropping padding)".to_string()]);
    }
    Ok(Conversation { id, split, status, satisfaction, utterances })
}

fn parse_id(obj: &Map<String, Value>) -> std::result::Result<ConvId, String> {
    match obj.get("id") {
        None => Err("missing field `id`".into()),
        Some(Value::String(s)) if s.is_empty() => Err("field `id`: must not be empty".into()),
        Some(Value::String(s)) => Ok(ConvId::Str(s.clone())),
        Some(v @ Value::Number(n)) => n
            .as_i64()
            .map(ConvId::Int)
            .ok_or_else(|| format!("field `id`: expected an integer or a string, found {}", describe(v))),
        Some(v) => Err(format!("field `id`: expected an integer or a string, found {}", describe(v))),
    }
}

fn parse_split(obj: &Map<String, Value>) -> std::result::Result<Split, String> {
    match obj.get("split") {
        None => Err("missing field `split`".into()),
        Some(Value::String(s)) => Split::parse(s)
            .ok_or_else(|| format!("field `split`: unknown split {s:?} (expected train, val, test or unlabeled)")),
        Some(v) => Err(format!("field `split`: expected a string, found {}", describe(v))),
    }
}

fn int_field(obj: &Map<String, Value>, name: &str, max: u8, required: bool) -> std::result::Result<Option<u8>, String> {
    match obj.get(name) {
        None | Some(Value::Null) if required => Err(format!("missing field `{name}` (required on labeled splits)")),
        None | Some(Value::Null) => Ok(None),
        Some(v) => small_int(v, max).map(Some).map_err(|e| format!("field `{name}`: {e}")),
    }
}

fn small_int(v: &Value, max: u8) -> std::result::Result<u8, String> {
    match v.as_i64() {
        Some(i) if (0..=i64::from(max)).contains(&i) => Ok(i as u8),
        Some(i) => Err(format!("{i} is out of range 0..={max}")),
        None => Err(format!("expected an integer, found {}", describe(v))),
    }
}

fn list_field<T, E: std::fmt::Display>(
    obj: &Map<String, Value>,
    name: &str,
    item: impl Fn(&Value) -> std::result::Result<T, E>,
    problems: &mut Vec<String>,
) -> Option<Vec<T>> {
    let list = match obj.get(name) {
        None => {
            problems.push(format!("missing field `{name}`"));
            return None;
        }
        Some(Value::Array(list)) => list,
        Some(v) => {
            problems.push(format!("field `{name}`: expected a list, found {}", describe(v)));
            return None;
        }
    };
    let before = problems.len();
    let out: Vec<T> = list
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            item(v).map_err(|e| problems.push(format!("field `{name}[{i}]`: {}", expected(e, v)))).ok()
        })
        .collect();
    (problems.len() == before).then_some(out)
}

fn expected(e: impl std::fmt::Display, v: &Value) -> String {
    let e = e.to_string();
    if e.starts_with("a ") {
        format!("expected {e}, found {}", describe(v))
    } else {
        e
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.len() > 40 => {
            let end = (0..=40).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            format!("a string ({:?}…)", &s[..end])
        }
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// serde_json appends " at line L column C"; the line is always 1 here, so keep the message.
fn strip_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// Serialises a conversation back to the JSON-lines input format.
pub fn to_record(c: &Conversation) -> Value {
    serde_json::json!({
        "id": c.id,
        "split": c.split,
        "status": c.status,
        "satisfaction": c.satisfaction,
        "texts": c.utterances.iter().map(|u| &u.text).collect::<Vec<_>>(),
        "authors": c.utterances.iter().map(|u| u.speaker).collect::<Vec<_>>(),
        "labels": c.utterances.iter().map(|u| u.label).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Conversation {
        parse_record(line.as_bytes()).unwrap()
    }

    #[test]
    fn drops_padding_and_keeps_ids_as_given() {
        let c = ok(r#"{"id":"c-1","split":"train","status":1,"satisfaction":3,
            "texts":["a","<pad>","b"],"authors":[2,0,3],"labels":[1,0,2]}"#);
        assert_eq!(c.id, ConvId::Str("c-1".into()));
        assert_eq!(c.utterances.len(), 2);
        assert_eq!(c.utterances[1], Utterance { text: "b".into(), speaker: 3, label: 2 });
        let c = ok(r#"{"id":7,"split":"unlabeled","texts":["x"],"authors":[2],"labels":[0]}"#);
        assert_eq!((c.id, c.status, c.satisfaction), (ConvId::Int(7), None, None));
    }

    #[test]
    fn emotion_labels_are_optional() {
        let without = r#"{"id":"c","split":"train","status":1,"satisfaction":3,"texts":["a","b"],"authors":[2,3]}"#;
        let null =
            r#"{"id":"c","split":"train","status":1,"satisfaction":3,"texts":["a","b"],"authors":[2,3],"labels":null}"#;
        for line in [without, null] {
            let c = ok(line);
            assert_eq!(c.utterances.iter().map(|u| u.label).collect::<Vec<_>>(), [0, 0], "{line}");
            assert_eq!(fast_record(line).as_ref(), Some(&c), "{line}");
            assert_eq!(checked_record(line).as_ref(), Ok(&c), "{line}");
        }
        // Given, they are checked as before.
        let short =
            r#"{"id":"c","split":"train","status":1,"satisfaction":3,"texts":["a","b"],"authors":[2,3],"labels":[1]}"#;
        assert!(fast_record(short).is_none());
        assert!(checked_record(short).unwrap_err()[0].contains("different lengths (2, 2, 1)"));
        let wrong =
            r#"{"id":"c","split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":"x"}"#;
        assert!(fast_record(wrong).is_none());
        assert!(checked_record(wrong).unwrap_err()[0].contains("field `labels`: expected a list"));
    }

    #[test]
    fn reports_every_problem_of_a_record() {
        let errs = parse_record(
            br#"{"id":1.5,"split":"train","status":9,"satisfaction":3,"texts":["a",2],"authors":[2,2],"labels":[1,1]}"#,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("field `id`"));
        assert!(errs[1].contains("field `status`: 9 is out of range 0..=4"));
        assert!(errs[2].contains("field `texts[1]`: expected a string, found a number (2)"));
    }

    #[test]
    fn typed_and_checked_paths_agree() {
        let cfg =
            crate::data::synthetic::SyntheticConfig { train: 20, val: 0, test: 0, unlabeled: 20, ..Default::default() };
        for c in cfg.generate() {
            let line = to_record(&c).to_string();
            assert_eq!(fast_record(&line).as_ref(), Some(&c));
            assert_eq!(checked_record(&line), Ok(c));
        }
        // Whatever the typed path refuses, the checked path explains.
        for bad in [
            r#"{"id":1,"split":"train","satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#,
            r#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1,2]}"#,
            r#"{"id":-0.5,"split":"unlabeled","texts":["a"],"authors":[2],"labels":[1]}"#,
            r#"{"id":1,"split":"unlabeled","texts":["a"],"authors":[9],"labels":[1]}"#,
        ] {
            assert!(fast_record(bad).is_none(), "{bad}");
            assert!(!checked_record(bad).unwrap_err().is_empty(), "{bad}");
        }
    }
}
