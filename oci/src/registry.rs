//! Talking to registries with oci-client: manifests, streamed blob downloads into the
//! store, and pushing images from the store.

use std::io::Write as _;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::digest::Digest;
use crate::error::{IoContext, OciError, Result};
use crate::manifest::{
    image_blobs, parse_manifest, Manifest, ACCEPTED_MANIFESTS, MAX_MANIFEST_BYTES, OCI_INDEX,
    OCI_MANIFEST,
};
use crate::manifest_fetch::{get_capped, too_large, CappedGet};
use crate::progress::Progress;
use crate::registry_error::registry_failure;
use crate::store::Store;

/// How many blobs are downloaded at once.
const PARALLEL_BLOBS: usize = 3;

/// Connection settings for one registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (host[:port]) that may be reached over plain HTTP besides localhost.
    pub insecure_registries: Vec<String>,
    /// Credentials; `None` looks them up ([`crate::auth::credentials_for`]).
    pub auth: Option<RegistryAuth>,
}

fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// A client bound to one registry and its credentials.
pub struct RegistryClient {
    client: Client,
    /// Plain HTTP client for capped manifest GETs (same timeouts and TLS as `client`).
    http: std::result::Result<reqwest::Client, String>,
    plain_http: bool,
    auth: RegistryAuth,
    registry: String,
}

impl RegistryClient {
    /// Connects (lazily) to the registry of `reference`. Plain HTTP is used only for
    /// loopback registries and those listed as insecure.
    pub fn new(reference: &Reference, options: &RegistryOptions) -> Self {
        // oci-client is built without a default crypto provider (ring keeps builds fast).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = reference.resolve_registry().to_string();
        let plain_http =
            is_loopback(&registry) || options.insecure_registries.iter().any(|r| r == &registry);
        let protocol = if plain_http {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let (connect_timeout, read_timeout) = (
            std::time::Duration::from_secs(30),
            std::time::Duration::from_secs(120),
        );
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(connect_timeout),
            read_timeout: Some(read_timeout),
            ..Default::default()
        });
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"));
        let auth = options
            .auth
            .clone()
            .unwrap_or_else(|| crate::auth::credentials_for(&registry));
        RegistryClient {
            client,
            http,
            plain_http,
            auth,
            registry,
        }
    }

    /// A client failure while doing `action` on `reference`, classified (unreachable,
    /// TLS, not found, authentication, other).
    fn fail(&self, reference: &Reference, action: &str, e: &OciDistributionError) -> OciError {
        registry_failure(&self.registry, &reference.whole(), action, e)
    }

    fn err(&self, e: impl std::fmt::Display) -> OciError {
        OciError::Registry {
            registry: self.registry.clone(),
            message: e.to_string(),
        }
    }

    /// Authenticates for `op` on `reference`; returns the bearer token if the registry
    /// uses the token flow.
    async fn authenticate(
        &self,
        reference: &Reference,
        op: RegistryOperation,
    ) -> Result<Option<String>> {
        self.client
            .auth(reference, &self.auth, op)
            .await
            .map_err(|e| match self.fail(reference, "authenticating", &e) {
                // The /v2/ probe only fails for auth reasons when it says so.
                OciError::Registry { registry, message } => OciError::AuthenticationFailed {
                    registry,
                    detail: message,
                },
                other => other,
            })
    }

    /// Fetches the manifest (or index) `reference` points to, verified against its digest,
    /// and stores it. Returns its digest and bytes. Documents past [`MAX_MANIFEST_BYTES`]
    /// are refused without being buffered ([`crate::manifest_fetch`]).
    pub async fn fetch_manifest(
        &self,
        store: &Store,
        reference: &Reference,
    ) -> Result<(Digest, Vec<u8>)> {
        let token = self
            .authenticate(reference, RegistryOperation::Pull)
            .await?;
        let http = self.http.as_ref().map_err(|e| self.err(e))?;
        let url = self.manifest_url(reference);
        let request = http
            .get(&url)
            .header(http::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        let request = match (&token, &self.auth) {
            (Some(token), _) | (None, RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let data = match get_capped(request, &url, MAX_MANIFEST_BYTES).await {
            CappedGet::Body(data) => data,
            CappedGet::Failed(e) => return Err(self.fail(reference, "fetching the manifest", &e)),
            CappedGet::TooLarge(size) => {
                return Err(too_large(
                    format!("manifest of {}", reference.whole()),
                    size,
                    MAX_MANIFEST_BYTES,
                ))
            }
        };
        let digest = Digest::of(&data);
        if let Some(pinned) = reference.digest() {
            let pinned = Digest::parse(pinned)?;
            pinned.verify(&format!("manifest of {}", reference.whole()), &data)?;
        }
        store.put_blob_bytes(&data, Some(&digest))?;
        Ok((digest, data))
    }

    /// The distribution-spec URL of `reference`'s manifest.
    fn manifest_url(&self, reference: &Reference) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        let target = match reference.digest() {
            Some(digest) => digest,
            None => reference.tag().unwrap_or("latest"),
        };
        let namespace = reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!(
            "{scheme}://{}/v2/{}/manifests/{target}{namespace}",
            self.registry,
            reference.repository()
        )
    }

    /// Downloads every listed blob not yet in the store, streaming to temp files and
    /// committing each only after its digest and size check.
    pub async fn fetch_blobs(
        &self,
        store: &Store,
        reference: &Reference,
        blobs: &[(Digest, u64)],
        progress: &Progress,
    ) -> Result<()> {
        let missing: Vec<&(Digest, u64)> =
            blobs.iter().filter(|(d, _)| !store.has_blob(d)).collect();
        futures_util::stream::iter(
            missing
                .into_iter()
                .map(|(digest, size)| self.fetch_blob(store, reference, digest, *size, progress)),
        )
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    async fn fetch_blob(
        &self,
        store: &Store,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        progress: &Progress,
    ) -> Result<()> {
        let digest_text = digest.to_string();
        let mut stream = self
            .client
            .pull_blob_stream(reference, digest_text.as_str())
            .await
            .map_err(|e| self.fail(reference, &format!("fetching blob {digest}"), &e))?;
        let bar = progress.bar(&digest.hex()[..12], size);
        let mut writer = store.blob_writer()?;
        let mut received: u64 = 0;
        while let Some(chunk) = stream.next().await {
            // The last item is a digest error if the content does not match.
            let chunk = chunk.map_err(|e| self.err(format!("downloading blob {digest}: {e}")))?;
            received += chunk.len() as u64;
            if received > size {
                return Err(OciError::SizeMismatch {
                    digest: digest_text,
                    expected: size,
                    actual: received,
                });
            }
            writer
                .write_all(&chunk)
                .at(writer.temp_path().to_path_buf())?;
            bar.inc(chunk.len() as u64);
        }
        writer.commit(Some(digest), Some(size))?;
        bar.finish_and_clear();
        tracing::debug!(%digest, size, "blob stored");
        Ok(())
    }

    /// Pushes the image (or index with its platform images) `manifest` from the store to
    /// `target`, skipping blobs the registry already has.
    pub async fn push(&self, store: &Store, manifest: &Digest, target: &Reference) -> Result<()> {
        self.authenticate(target, RegistryOperation::Push).await?;
        self.push_tree(store, manifest, target, true).await
    }

    async fn push_tree(
        &self,
        store: &Store,
        manifest: &Digest,
        target: &Reference,
        top: bool,
    ) -> Result<()> {
        let data = store.read_manifest(manifest)?;
        let parsed = parse_manifest(&data, &format!("manifest {manifest}"))?;
        let default_type = match &parsed {
            Manifest::Image(image) => {
                for blob in image_blobs(image)? {
                    self.push_blob(store, target, &blob).await?;
                }
                OCI_MANIFEST
            }
            Manifest::Index(index) => {
                for entry in index.manifests() {
                    let child = Digest::parse(entry.digest().as_ref())?;
                    Box::pin(self.push_tree(store, &child, target, false)).await?;
                }
                OCI_INDEX
            }
        };
        let media_type = serde_json::from_slice::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| default_type.to_string());
        let destination = if top && target.digest().is_none() {
            target.clone()
        } else {
            Reference::with_digest(
                target.registry().to_string(),
                target.repository().to_string(),
                manifest.to_string(),
            )
        };
        let content_type = http::HeaderValue::from_str(&media_type)
            .map_err(|e| self.err(format!("bad media type {media_type:?}: {e}")))?;
        self.client
            .push_manifest_raw(&destination, data, content_type)
            .await
            .map_err(|e| self.fail(&destination, &format!("pushing manifest {manifest}"), &e))?;
        Ok(())
    }

    async fn push_blob(&self, store: &Store, target: &Reference, digest: &Digest) -> Result<()> {
        let exists = self
            .client
            .blob_exists(target, &digest.to_string())
            .await
            .map_err(|e| self.fail(target, &format!("checking blob {digest}"), &e))?;
        if exists {
            return Ok(());
        }
        let path = store.blob_path(digest);
        let size = std::fs::metadata(&path).at(&path)?.len();
        let file = tokio::fs::File::open(&path).await.at(&path)?;
        let chunks = futures_util::stream::unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 4 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((
                    Err(oci_client::errors::OciDistributionError::IoError(e)),
                    file,
                )),
            }
        });
        self.client
            .push_blob_stream(target, chunks, &digest.to_string(), Some(size))
            .await
            .map_err(|e| self.fail(target, &format!("pushing blob {digest}"), &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:1"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("127.0.0.1.evil.com"));
        assert!(!is_loopback("docker.io"));
    }
}
