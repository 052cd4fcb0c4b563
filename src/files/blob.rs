//! Where the bytes of shared files live: a directory or an S3-compatible
//! bucket, through the `object_store` crate. A blob is written in parts and
//! becomes visible whole or not at all (a local file is renamed into place,
//! an S3 multipart upload is completed).

use crate::config::FileStoreLocation;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Parts in flight at once per upload (each up to 5 MiB).
const PARTS_IN_FLIGHT: usize = 2;

/// Why the file store failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no such file in the file store")]
    NotFound,
    #[error("file store: {0}")]
    Store(#[from] object_store::Error),
    #[error("cannot create the file directory {path}: {source}")]
    Directory {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("file store URL `{0}` must be s3://BUCKET or s3://BUCKET/PREFIX")]
    Url(String),
}

/// The file store.
#[derive(Debug, Clone)]
pub struct Blobs {
    inner: Arc<dyn ObjectStore>,
    /// Inside the bucket, where this deployment's files go.
    prefix: Path,
    /// The directory, for a local store (its half-written parts are swept).
    directory: Option<std::path::PathBuf>,
}

impl Blobs {
    pub fn open(location: &FileStoreLocation) -> Result<Blobs, BlobError> {
        match location {
            FileStoreLocation::Directory(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| BlobError::Directory {
                    path: dir.clone(),
                    source,
                })?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
                Ok(Blobs {
                    inner: Arc::new(local),
                    prefix: Path::default(),
                    directory: Some(dir.clone()),
                })
            }
            FileStoreLocation::S3(url) => {
                let rest = url
                    .strip_prefix("s3://")
                    .ok_or_else(|| BlobError::Url(url.clone()))?;
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(BlobError::Url(url.clone()));
                }
                // A few quick retries: a user is waiting for the answer, and
                // a failed upload can be sent again with the same token.
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(15),
                    ..object_store::RetryConfig::default()
                };
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry);
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    builder = builder.with_region("us-east-1");
                }
                Ok(Blobs {
                    inner: Arc::new(builder.build()?),
                    prefix: Path::from(prefix.trim_matches('/')),
                    directory: None,
                })
            }
        }
    }

    fn path(&self, file_id: &str) -> Path {
        self.prefix.clone().join(file_id)
    }

    /// Starts writing a blob; nothing is visible until [`BlobWriter::finish`].
    pub async fn create(&self, file_id: &str) -> Result<BlobWriter, BlobError> {
        let upload = self.inner.put_multipart(&self.path(file_id)).await?;
        Ok(BlobWriter {
            parts: WriteMultipart::new(upload),
        })
    }

    /// A blob's bytes (those of `range`, if given) as a stream.
    pub async fn read(
        &self,
        file_id: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let found = self
            .inner
            .get_opts(&self.path(file_id), options)
            .await
            .map_err(not_found)?;
        Ok(found.into_stream().map_err(BlobError::from).boxed())
    }

    /// Deletes a blob; one that is not there is deleted already.
    pub async fn delete(&self, file_id: &str) -> Result<(), BlobError> {
        match self
            .inner
            .delete(&self.path(file_id))
            .await
            .map_err(not_found)
        {
            Ok(()) | Err(BlobError::NotFound) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Removes half-written parts a local store left behind when the
    /// process died in the middle of an upload (`NAME#N` files older than
    /// `age`). A bucket forgets unfinished multipart uploads by its own
    /// lifecycle rules.
    pub fn sweep_parts(&self, age: Duration) -> usize {
        let Some(dir) = &self.directory else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_part =
                name.to_str()
                    .and_then(|n| n.split_once('#'))
                    .is_some_and(|(_, suffix)| {
                        !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
                    });
            let old = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|elapsed| elapsed > age);
            if is_part && old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn not_found(err: object_store::Error) -> BlobError {
    match err {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        other => BlobError::Store(other),
    }
}

/// A blob being written.
pub struct BlobWriter {
    parts: WriteMultipart,
}

impl BlobWriter {
    /// Adds bytes; waits while too many parts are on their way.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        self.parts.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.parts.put(bytes);
        Ok(())
    }

    /// Makes the blob visible, whole.
    pub async fn finish(self) -> Result<(), BlobError> {
        self.parts.finish().await?;
        Ok(())
    }

    /// Throws the parts away.
    pub async fn abort(self) {
        if let Err(err) = self.parts.abort().await {
            tracing::warn!(error = %err, "could not discard the parts of a failed upload");
        }
    }
}
