//! Multipart uploads that a killed run cannot orphan. Remote stores upload large objects in
//! parts; a process killed mid-upload leaves an incomplete upload that the store keeps (and
//! bills) until someone aborts it, and object stores offer no portable way to list them.
//! [`Journaled`] decorates a store: each multipart upload is recorded as a small object
//! under the output's journal prefix as soon as it is created and the record is removed
//! when the upload completes or aborts; the next run of the step aborts whatever is still
//! recorded ([`abort_recorded`]). The record is written before the first part, so only a
//! process killed between the upload's creation and its record (one request, no bytes
//! uploaded yet) can leave an upload unrecorded.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a record says: which upload of which object.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    path: String,
    id: MultipartId,
}

/// A store whose multipart uploads are recorded under `journal` while in flight.
pub struct Journaled {
    inner: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    journal: Path,
}

impl Journaled {
    pub fn new(inner: Arc<dyn ObjectStore>, multipart: Arc<dyn MultipartStore>, journal: Path) -> Self {
        Journaled { inner, multipart, journal }
    }
}

impl std::fmt::Debug for Journaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journaled({:?})", self.inner)
    }
}

impl std::fmt::Display for Journaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journaled({})", self.inner)
    }
}

fn record_path(journal: &Path, location: &Path, id: &str) -> Path {
    let digest = Sha256::digest(format!("{location}\n{id}").as_bytes());
    journal.clone().join(format!("{}.json", hex::encode(&digest[..12])))
}

#[async_trait]
impl ObjectStore for Journaled {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let id = self.multipart.create_multipart_opts(location, opts).await?;
        let record = record_path(&self.journal, location, &id);
        let body = serde_json::to_vec(&Record { path: location.to_string(), id: id.clone() })
            .map_err(|e| object_store::Error::Generic { store: "journal", source: Box::new(e) })?;
        if let Err(e) = self.inner.put(&record, body.into()).await {
            let _ = self.multipart.abort_multipart(location, &id).await;
            return Err(e);
        }
        Ok(Box::new(Upload {
            inner: self.inner.clone(),
            multipart: self.multipart.clone(),
            location: location.clone(),
            id,
            record,
            parts: Arc::new(Mutex::new(Vec::new())),
            next: 0,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// One recorded upload: parts go through the store's multipart API.
struct Upload {
    inner: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    location: Path,
    id: MultipartId,
    record: Path,
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
    next: usize,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upload({}, {})", self.location, self.id)
    }
}

impl Upload {
    async fn forget(&self) {
        if let Err(e) = self.inner.delete(&self.record).await {
            tracing::warn!(record = %self.record, error = %e, "could not remove an upload record");
        }
    }
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let idx = self.next;
        self.next += 1;
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).push(None);
        let (multipart, location, id, parts) =
            (self.multipart.clone(), self.location.clone(), self.id.clone(), self.parts.clone());
        Box::pin(async move {
            let part = multipart.put_part(&location, &id, idx, data).await?;
            parts.lock().unwrap_or_else(|e| e.into_inner())[idx] = Some(part);
            Ok(())
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let parts: Option<Vec<PartId>> = self.parts.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let parts = parts.ok_or_else(|| object_store::Error::Generic {
            store: "journal",
            source: "a part of the upload was not uploaded".into(),
        })?;
        let result = self.multipart.complete_multipart(&self.location, &self.id, parts).await?;
        self.forget().await;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.multipart.abort_multipart(&self.location, &self.id).await?;
        self.forget().await;
        Ok(())
    }
}

/// Aborts every upload recorded under `journal` and removes the records.
pub async fn abort_recorded(
    inner: &Arc<dyn ObjectStore>,
    multipart: &Arc<dyn MultipartStore>,
    journal: &Path,
) -> Result<usize> {
    let records: Vec<ObjectMeta> = inner.list(Some(journal)).try_collect().await?;
    for meta in &records {
        let bytes = inner.get(&meta.location).await?.bytes().await?;
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) => {
                tracing::info!(object = %record.path, "aborting a multipart upload a killed run left");
                match multipart.abort_multipart(&Path::from(record.path.as_str()), &record.id).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => tracing::warn!(object = %record.path, error = %e, "could not abort an upload"),
                }
            }
            Err(e) => tracing::warn!(record = %meta.location, error = %e, "unreadable upload record"),
        }
        match inner.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn uploads_are_recorded_in_flight_and_aborted_later() {
        let memory = Arc::new(InMemory::new());
        let journal = Path::from("out/_taft/uploads");
        let store: Arc<dyn ObjectStore> = Arc::new(Journaled::new(memory.clone(), memory.clone(), journal.clone()));
        let records = || async { memory.list(Some(&journal)).try_collect::<Vec<_>>().await.unwrap().len() };

        // A completed upload leaves no record and the object in place.
        let mut w = object_store::buffered::BufWriter::with_capacity(store.clone(), Path::from("out/big"), 1024);
        w.write_all(&vec![7u8; 5000]).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(memory.get(&Path::from("out/big")).await.unwrap().bytes().await.unwrap().len(), 5000);
        assert_eq!(records().await, 0);

        // An upload left in flight (a killed run) stays recorded until aborted.
        let mut upload = store.put_multipart(&Path::from("out/left")).await.unwrap();
        upload.put_part(vec![1u8; 100].into()).await.unwrap();
        std::mem::forget(upload);
        assert_eq!(records().await, 1);
        let dyn_memory: Arc<dyn ObjectStore> = memory.clone();
        let dyn_multipart: Arc<dyn MultipartStore> = memory.clone();
        assert_eq!(abort_recorded(&dyn_memory, &dyn_multipart, &journal).await.unwrap(), 1);
        assert_eq!(records().await, 0);
        assert!(memory.get(&Path::from("out/left")).await.is_err(), "an aborted upload never appears");
    }
}
