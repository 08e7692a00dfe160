//! `predictions.parquet`: one row per scored item — its conversation id (and utterance index
//! for utterance-level models), then per task the true label (null when the item has none),
//! the predicted label, the predicted class name and the class probabilities.

use std::sync::Arc;

use arrow_array::builder::{Float32Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;

use crate::data::ConvId;
use crate::error::{Error, Result};

/// The predictions of one task.
pub struct TaskPredictions<'a> {
    /// The column prefix: the task's head (`status`, `satisfaction`, `role`).
    pub head: &'a str,
    pub classes: &'a [String],
    /// The true label of each item, when it has one (`None`: no label column).
    pub labels: Option<&'a [Option<i64>]>,
    /// Class probabilities of each item.
    pub probs: &'a [Vec<f32>],
}

/// Writes the rows as a Parquet file (zstd).
pub fn write(ids: &[ConvId], utterances: Option<&[i32]>, tasks: &[TaskPredictions]) -> Result<Bytes> {
    let string_ids = !ids.iter().all(|id| matches!(id, ConvId::Int(_)));
    let batch = batch(ids, string_ids, utterances, tasks)?;
    let perr = |source| Error::Parquet { url: "predictions.parquet".into(), source };
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties())).map_err(perr)?;
    writer.write(&batch).map_err(perr)?;
    writer.close().map_err(perr)?;
    Ok(Bytes::from(out))
}

/// How prediction files are written: zstd, with this program's name.
pub fn properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::try_new(3).expect("valid level")))
        .set_created_by(crate::store::manifest::program())
        .build()
}

/// The rows as one record batch; the `id` column is a string column with `string_ids`
/// (integer ids written as text), else an integer one (every id must be an integer).
pub fn batch(
    ids: &[ConvId],
    string_ids: bool,
    utterances: Option<&[i32]>,
    tasks: &[TaskPredictions],
) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    if !string_ids {
        if let Some(id) = ids.iter().find(|id| !matches!(id, ConvId::Int(_))) {
            return Err(Error::Other(format!("predictions: id {id} in an integer id column")));
        }
        let mut b = Int64Builder::with_capacity(ids.len());
        for id in ids {
            if let ConvId::Int(i) = id {
                b.append_value(*i);
            }
        }
        fields.push(Field::new("id", DataType::Int64, false));
        columns.push(Arc::new(b.finish()));
    } else {
        let mut b = StringBuilder::new();
        for id in ids {
            match id {
                ConvId::Str(s) => b.append_value(s),
                ConvId::Int(i) => b.append_value(i.to_string()),
            }
        }
        fields.push(Field::new("id", DataType::Utf8, false));
        columns.push(Arc::new(b.finish()));
    }
    if let Some(u) = utterances {
        let mut b = Int32Builder::with_capacity(u.len());
        b.append_slice(u);
        fields.push(Field::new("utterance", DataType::Int32, false));
        columns.push(Arc::new(b.finish()));
    }
    for t in tasks {
        if t.labels.is_some_and(|l| l.len() != ids.len()) || t.probs.len() != ids.len() {
            return Err(Error::Other(format!(
                "predictions of `{}`: {} probabilities, {} rows",
                t.head,
                t.probs.len(),
                ids.len()
            )));
        }
        let (mut label, mut pred, mut class) = (Int32Builder::new(), Int32Builder::new(), StringBuilder::new());
        let mut probs =
            ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new("item", DataType::Float32, false)));
        for y in t.labels.into_iter().flatten() {
            label.append_option(y.map(|y| y as i32));
        }
        for p in t.probs {
            let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a))).unwrap_or(0);
            pred.append_value(best as i32);
            class.append_value(t.classes.get(best).map_or("", String::as_str));
            probs.values().append_slice(p);
            probs.append(true);
        }
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        if t.labels.is_some() {
            fields.push(Field::new(format!("{}_label", t.head), DataType::Int32, true));
            columns.push(Arc::new(label.finish()));
        }
        fields.push(Field::new(format!("{}_pred", t.head), DataType::Int32, false));
        fields.push(Field::new(format!("{}_class", t.head), DataType::Utf8, false));
        fields.push(Field::new(format!("{}_probs", t.head), DataType::List(item), false));
        columns.push(Arc::new(pred.finish()));
        columns.push(Arc::new(class.finish()));
        columns.push(Arc::new(probs.finish()));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// One task's scored items read back from a `predictions.parquet` that has its labels:
/// each labeled item's key (`id`, or `id#utterance`), true label and predicted label.
pub struct Labeled {
    pub keys: Vec<String>,
    pub truth: Vec<i64>,
    pub pred: Vec<i64>,
}

/// Reads the labeled items of the task whose columns start with `head`; `url` names the
/// file in errors.
pub fn read_labeled(bytes: Bytes, url: &str, head: &str) -> Result<Labeled> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let bad = |what: String| Error::input(format!("{url}: {what}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|source| Error::Parquet { url: url.to_string(), source })?;
    let mut out = Labeled { keys: Vec::new(), truth: Vec::new(), pred: Vec::new() };
    for batch in reader {
        let batch = batch?;
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| bad(format!("no column `{name}`")));
        let ids = column("id")?;
        let id = |i: usize| -> Result<String> {
            match ids.data_type() {
                DataType::Int64 => Ok(ids.as_primitive::<Int64Type>().value(i).to_string()),
                DataType::Utf8 => Ok(ids.as_string::<i32>().value(i).to_string()),
                other => Err(bad(format!("column `id` is {other}, not an integer or a string"))),
            }
        };
        let utterance = batch.column_by_name("utterance").map(|c| c.as_primitive_opt::<Int32Type>());
        let int32 = |name: &str| -> Result<&arrow_array::Int32Array> {
            column(name)?.as_primitive_opt::<Int32Type>().ok_or_else(|| bad(format!("column `{name}` is not int32")))
        };
        let (label, pred) = (int32(&format!("{head}_label"))?, int32(&format!("{head}_pred"))?);
        for i in 0..batch.num_rows() {
            if label.is_null(i) {
                continue;
            }
            let key = match utterance {
                Some(Some(u)) => format!("{}#{}", id(i)?, u.value(i)),
                Some(None) => return Err(bad("column `utterance` is not int32".into())),
                None => id(i)?,
            };
            out.keys.push(key);
            out.truth.push(i64::from(label.value(i)));
            out.pred.push(i64::from(pred.value(i)));
        }
    }
    Ok(out)
}
