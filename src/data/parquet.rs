//! `conversations.parquet`: one row per conversation, utterances as a list of
//! `{text, speaker, label}` structs, zstd-compressed, written in bounded row groups.

use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWrite;

use super::{ConvId, Conversation, Split, Utterance};
use crate::error::{Error, Result};

/// The file name prep writes.
pub const CONVERSATIONS: &str = "conversations.parquet";
/// Conversations per row group (and per Arrow batch): bounds the writer's memory.
pub const ROW_GROUP: usize = 4096;

/// Whether conversation ids are integers or strings; fixed by the first record of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Int,
    Str,
}

impl IdKind {
    pub fn of(id: &ConvId) -> IdKind {
        match id {
            ConvId::Int(_) => IdKind::Int,
            ConvId::Str(_) => IdKind::Str,
        }
    }
}

fn utterance_fields() -> Fields {
    Fields::from(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new("speaker", DataType::Int32, false),
        Field::new("label", DataType::Int32, false),
    ])
}

/// The Arrow schema of `conversations.parquet`.
pub fn schema(id: IdKind) -> SchemaRef {
    let id_type = match id {
        IdKind::Int => DataType::Int64,
        IdKind::Str => DataType::Utf8,
    };
    let item = Field::new("item", DataType::Struct(utterance_fields()), false);
    Arc::new(Schema::new(vec![
        Field::new("id", id_type, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("status", DataType::Int32, true),
        Field::new("satisfaction", DataType::Int32, true),
        Field::new("utterances", DataType::List(Arc::new(item)), false),
    ]))
}

/// Converts conversations (all with ids of one kind) into a record batch.
pub fn to_batch(id: IdKind, rows: &[Conversation]) -> Result<RecordBatch> {
    let ids: ArrayRef = match id {
        IdKind::Int => {
            let mut b = Int64Builder::with_capacity(rows.len());
            for c in rows {
                match &c.id {
                    ConvId::Int(i) => b.append_value(*i),
                    ConvId::Str(_) => return Err(Error::Other("mixed id kinds in one batch".into())),
                }
            }
            Arc::new(b.finish())
        }
        IdKind::Str => {
            let mut b = StringBuilder::new();
            for c in rows {
                match &c.id {
                    ConvId::Str(s) => b.append_value(s),
                    ConvId::Int(_) => return Err(Error::Other("mixed id kinds in one batch".into())),
                }
            }
            Arc::new(b.finish())
        }
    };
    let split = StringArray::from_iter_values(rows.iter().map(|c| c.split.as_str()));
    let status: Int32Array = rows.iter().map(|c| c.status.map(i32::from)).collect();
    let satisfaction: Int32Array = rows.iter().map(|c| c.satisfaction.map(i32::from)).collect();
    let n_utt: usize = rows.iter().map(|c| c.utterances.len()).sum();
    let mut text = StringBuilder::with_capacity(n_utt, n_utt * 64);
    let mut speaker = Int32Builder::with_capacity(n_utt);
    let mut label = Int32Builder::with_capacity(n_utt);
    for u in rows.iter().flat_map(|c| &c.utterances) {
        text.append_value(&u.text);
        speaker.append_value(i32::from(u.speaker));
        label.append_value(i32::from(u.label));
    }
    let items = StructArray::try_new(
        utterance_fields(),
        vec![Arc::new(text.finish()), Arc::new(speaker.finish()), Arc::new(label.finish())],
        None,
    )?;
    let offsets = arrow_buffer::OffsetBuffer::from_lengths(rows.iter().map(|c| c.utterances.len()));
    let item = Arc::new(Field::new("item", DataType::Struct(utterance_fields()), false));
    let utterances = ListArray::try_new(item, offsets, Arc::new(items), None)?;
    Ok(RecordBatch::try_new(
        schema(id),
        vec![ids, Arc::new(split), Arc::new(status), Arc::new(satisfaction), Arc::new(utterances)],
    )?)
}

/// Streams conversations into a Parquet file, one row group per [`ROW_GROUP`] rows.
/// Encoding and compression run on their own task, in parallel with the producer.
pub struct ConversationWriter<W: AsyncWrite + Unpin + Send + 'static> {
    id: IdKind,
    pending: Vec<Conversation>,
    tx: Option<tokio::sync::mpsc::Sender<Option<Vec<Conversation>>>>,
    task: tokio::task::JoinHandle<Result<(u64, W)>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> ConversationWriter<W> {
    pub fn new(sink: W, id: IdKind, url: &str) -> Result<Self> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .set_created_by(crate::store::manifest::program())
            .build();
        let url = url.to_string();
        let perr = {
            let url = url.clone();
            move |source| Error::Parquet { url: url.clone(), source }
        };
        let mut writer = AsyncArrowWriter::try_new(sink, schema(id), Some(props)).map_err(&perr)?;
        // Two batches in flight at most: bounded memory. `None` asks for the footer: a
        // channel closed without it (a failed step) never completes the file.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<Conversation>>>(2);
        let task = tokio::spawn(async move {
            let mut rows = 0u64;
            loop {
                match rx.recv().await {
                    Some(Some(batch)) => {
                        rows += batch.len() as u64;
                        writer.write(&to_batch(id, &batch)?).await.map_err(&perr)?;
                    }
                    Some(None) => {
                        // `finish` writes the footer and shuts the sink down (completing the upload).
                        writer.finish().await.map_err(&perr)?;
                        return Ok((rows, writer.into_inner()));
                    }
                    None => return Err(Error::Other(format!("{url}: abandoned before its footer"))),
                }
            }
        });
        Ok(ConversationWriter { id, pending: Vec::with_capacity(ROW_GROUP), tx: Some(tx), task })
    }

    /// The id kind this file was created for.
    pub fn id_kind(&self) -> IdKind {
        self.id
    }

    pub async fn push(&mut self, conversation: Conversation) -> Result<()> {
        self.pending.push(conversation);
        if self.pending.len() >= ROW_GROUP {
            let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(ROW_GROUP));
            let tx = self.tx.as_ref().expect("open until finish");
            if tx.send(Some(batch)).await.is_err() {
                // The encoder stopped: its error says why.
                return Err(self.join().await.err().unwrap_or_else(|| Error::Other("parquet writer stopped".into())));
            }
        }
        Ok(())
    }

    async fn join(&mut self) -> Result<(u64, W)> {
        self.tx = None;
        (&mut self.task).await.map_err(|e| Error::Other(format!("parquet writer task: {e}")))?
    }

    /// Writes what is pending and the footer; returns the number of rows and the sink.
    pub async fn finish(mut self) -> Result<(u64, W)> {
        let tx = self.tx.as_ref().expect("open until finish");
        let mut messages = vec![None];
        if !self.pending.is_empty() {
            messages.insert(0, Some(std::mem::take(&mut self.pending)));
        }
        for message in messages {
            if tx.send(message).await.is_err() {
                break;
            }
        }
        self.join().await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Drop for ConversationWriter<W> {
    fn drop(&mut self) {
        // Dropped before `finish` (a failed step): the channel closes without the footer
        // request, so the file is never completed; stop encoding too.
        if self.tx.is_some() {
            self.task.abort();
        }
    }
}

/// Reads a whole `conversations.parquet` back into records.
pub fn read_conversations(bytes: Bytes, url: &str) -> Result<Vec<Conversation>> {
    let mut out = Vec::new();
    for batch in conversation_batches(bytes, url)? {
        out.extend(batch?);
    }
    Ok(out)
}

/// The records of a `conversations.parquet`, one record batch at a time.
pub fn conversation_batches(bytes: Bytes, url: &str) -> Result<impl Iterator<Item = Result<Vec<Conversation>>>> {
    // A file that does not decode is a bad input, whatever the decoder says.
    let bad = |e: &dyn std::fmt::Display, url: &str| {
        Error::input(format!("{url}: not a readable Parquet file of conversations: {e}"))
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(|e| bad(&e, url))?;
    let url = url.to_string();
    Ok(reader.map(move |batch| from_batch(&batch.map_err(|e| bad(&e, &url))?, &url)))
}

/// A committed `conversations.parquet` read a row group at a time with ranged reads: the
/// footer first, then each row group's bytes, in file order, through a sha256 that is checked
/// against the manifest once the last bytes are read (a changed file is an input error, so
/// nothing made from it is committed). Memory holds one row group, not the file.
pub struct RowGroups<'a> {
    committed: &'a crate::store::manifest::Committed,
    name: String,
    url: String,
    size: u64,
    metadata: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    next: usize,
    /// Bytes hashed so far (a prefix of the file).
    pos: u64,
    hasher: sha2::Sha256,
}

impl<'a> RowGroups<'a> {
    pub async fn open(committed: &'a crate::store::manifest::Committed, name: &str) -> Result<RowGroups<'a>> {
        use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
        use parquet::file::metadata::ParquetMetaDataReader;
        let url = committed.store.url_of(name);
        let size = committed.entry(name)?.size;
        let bad = |what: &dyn std::fmt::Display| {
            Error::input(format!("{url}: not a readable Parquet file of conversations: {what}"))
        };
        if size < 12 {
            return Err(bad(&format!("{size} bytes")));
        }
        let tail = committed.store.get_range(name, size - 8..size).await?;
        if &tail[4..] != b"PAR1" {
            return Err(bad(&"no Parquet footer"));
        }
        let footer_len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
        if footer_len + 12 > size {
            return Err(bad(&format!("a footer of {footer_len} bytes in a file of {size}")));
        }
        let footer = committed.store.get_range(name, size - 8 - footer_len..size - 8).await?;
        let metadata = ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| bad(&e))?;
        let metadata =
            ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::default()).map_err(|e| bad(&e))?;
        Ok(RowGroups {
            committed,
            name: name.to_string(),
            url,
            size,
            metadata,
            next: 0,
            pos: 0,
            hasher: sha2::Digest::new(),
        })
    }

    /// Reads `pos..end` into the hash (and returns the bytes).
    async fn read_to(&mut self, end: u64) -> Result<Bytes> {
        let bytes = self.committed.store.get_range(&self.name, self.pos..end).await?;
        sha2::Digest::update(&mut self.hasher, &bytes);
        self.pos = end;
        Ok(bytes)
    }

    /// The conversations of the next row group; `None` after the last, once the whole file
    /// has been checked against the manifest.
    pub async fn next(&mut self) -> Result<Option<Vec<Conversation>>> {
        let groups = self.metadata.metadata().num_row_groups();
        if self.next == groups {
            if self.pos <= self.size {
                self.read_to(self.size).await?;
                let sha256 = hex::encode(sha2::Digest::finalize_reset(&mut self.hasher));
                self.pos = self.size + 1;
                self.committed.verify(&self.name, self.size, &sha256)?;
            }
            return Ok(None);
        }
        let group = self.metadata.metadata().row_group(self.next);
        let (start, end) = group
            .columns()
            .iter()
            .map(|c| c.byte_range())
            .fold((u64::MAX, 0), |(s, e), (cs, cl)| (s.min(cs), e.max(cs + cl)));
        if start < self.pos || end > self.size {
            return Err(Error::input(format!(
                "{}: row group {} at bytes {start}..{end} is not laid out in file order",
                self.url, self.next
            )));
        }
        // The bytes before this row group (the leading magic, or anything between groups).
        if start > self.pos {
            self.read_to(start).await?;
        }
        let bytes = self.read_to(end).await?;
        let span = Span { start, bytes, len: self.size };
        let url = self.url.clone();
        let bad = |e: &dyn std::fmt::Display| {
            Error::input(format!("{url}: not a readable Parquet file of conversations: {e}"))
        };
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(span, self.metadata.clone())
            .with_row_groups(vec![self.next])
            .build()
            .map_err(|e| bad(&e))?;
        let mut out = Vec::new();
        for batch in reader {
            out.extend(from_batch(&batch.map_err(|e| bad(&e))?, &self.url)?);
        }
        self.next += 1;
        Ok(Some(out))
    }
}

/// The bytes of one row group, read at their offsets in a file of `len` bytes.
struct Span {
    start: u64,
    bytes: Bytes,
    len: u64,
}

impl Span {
    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let from = start.checked_sub(self.start).map(|o| o as usize);
        match from {
            Some(from) if from + length <= self.bytes.len() => Ok(self.bytes.slice(from..from + length)),
            _ => Err(parquet::errors::ParquetError::General(format!(
                "bytes {start}..{} are outside the row group read ({}..{})",
                start + length as u64,
                self.start,
                self.start + self.bytes.len() as u64
            ))),
        }
    }
}

impl parquet::file::reader::Length for Span {
    fn len(&self) -> u64 {
        self.len
    }
}

impl parquet::file::reader::ChunkReader for Span {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let end = self.start + self.bytes.len() as u64;
        let length = end.saturating_sub(start) as usize;
        Ok(bytes::Buf::reader(self.slice(start, length)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, url: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::input(format!("{url}: column `{name}` missing or of the wrong type")))
}

/// Converts a record batch with the [`schema`] back into conversations.
pub fn from_batch(batch: &RecordBatch, url: &str) -> Result<Vec<Conversation>> {
    let id_col = batch.column_by_name("id").ok_or_else(|| Error::input(format!("{url}: column `id` missing")))?;
    let ids: Vec<ConvId> = if let Some(a) = id_col.as_any().downcast_ref::<Int64Array>() {
        a.values().iter().map(|&i| ConvId::Int(i)).collect()
    } else if let Some(a) = id_col.as_any().downcast_ref::<StringArray>() {
        a.iter().map(|s| ConvId::Str(s.unwrap_or_default().to_string())).collect()
    } else {
        return Err(Error::input(format!("{url}: column `id` is neither int64 nor string")));
    };
    let split: &StringArray = column(batch, "split", url)?;
    let status: &Int32Array = column(batch, "status", url)?;
    let satisfaction: &Int32Array = column(batch, "satisfaction", url)?;
    let utterances: &ListArray = column(batch, "utterances", url)?;
    let items = utterances
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| Error::input(format!("{url}: `utterances` is not a list of structs")))?;
    let text = items.column_by_name("text").and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let speaker = items.column_by_name("speaker").and_then(|c| c.as_any().downcast_ref::<Int32Array>());
    let label = items.column_by_name("label").and_then(|c| c.as_any().downcast_ref::<Int32Array>());
    let (Some(text), Some(speaker), Some(label)) = (text, speaker, label) else {
        return Err(Error::input(format!("{url}: `utterances` items lack text/speaker/label")));
    };
    let opt = |a: &Int32Array, i: usize| (!a.is_null(i)).then(|| a.value(i) as u8);
    let offsets = utterances.value_offsets();
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            let split = Split::parse(split.value(i))
                .ok_or_else(|| Error::input(format!("{url}: row {i}: unknown split {:?}", split.value(i))))?;
            let range = offsets[i] as usize..offsets[i + 1] as usize;
            Ok(Conversation {
                id,
                split,
                status: opt(status, i),
                satisfaction: opt(satisfaction, i),
                utterances: range
                    .map(|j| Utterance {
                        text: text.value(j).to_string(),
                        speaker: speaker.value(j) as u8,
                        label: label.value(j) as u8,
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_through_parquet_in_several_row_groups() {
        let rows: Vec<Conversation> = (0..(ROW_GROUP as i64 + 10))
            .map(|i| Conversation {
                id: ConvId::Str(format!("c{i}")),
                split: if i % 2 == 0 { Split::Train } else { Split::Unlabeled },
                status: (i % 2 == 0).then_some((i % 5) as u8),
                satisfaction: (i % 2 == 0).then_some((i % 7) as u8),
                utterances: (0..(1 + i % 4))
                    .map(|j| Utterance { text: format!("é {i} {j}"), speaker: 2 + (j % 2) as u8, label: j as u8 })
                    .collect(),
            })
            .collect();
        let mut w = ConversationWriter::new(Vec::<u8>::new(), IdKind::Str, "mem").unwrap();
        for r in rows.clone() {
            w.push(r).await.unwrap();
        }
        let (n, bytes) = w.finish().await.unwrap();
        assert_eq!(n as usize, rows.len());
        let back = read_conversations(Bytes::from(bytes), "mem").unwrap();
        assert_eq!(back, rows);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_dropped_before_finish_never_completes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::create(dir.path().to_str().unwrap()).unwrap();
        let conversation = |i| Conversation {
            id: ConvId::Int(i),
            split: Split::Train,
            status: None,
            satisfaction: None,
            utterances: vec![],
        };
        // The encoder task sees its channel close without the footer request — what happens
        // when a failing step drops the writer while the task is being polled.
        let mut w = ConversationWriter::new(store.writer("a.parquet"), IdKind::Int, "a").unwrap();
        w.push(conversation(1)).await.unwrap();
        w.tx = None;
        let outcome = (&mut w.task).await.unwrap();
        assert!(outcome.unwrap_err().to_string().contains("abandoned before its footer"));
        // A plain drop, too.
        let mut w = ConversationWriter::new(store.writer("b.parquet"), IdKind::Int, "b").unwrap();
        w.push(conversation(2)).await.unwrap();
        drop(w);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let left: Vec<String> = store.list().await.unwrap().into_iter().map(|(n, _)| n).collect();
        assert!(left.iter().all(|n| !n.ends_with(".parquet")), "{left:?}");
    }
}
