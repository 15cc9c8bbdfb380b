//! Image sources: `name[:tag|@digest]`, `oci:<dir>[:tag]`, `docker-archive:<file>`, and platforms.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_client::Reference;

use crate::digest::Digest;
use crate::error::{OciError, Result};

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A registry reference, normalised (`docker.io/library/` for bare names, `latest` tag).
    Registry(Reference),
    /// An OCI image layout directory and an optional `org.opencontainers.image.ref.name`.
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// The tag in its index; `None` takes the only manifest.
        tag: Option<String>,
    },
    /// A `docker save` tarball (its first image).
    DockerArchive {
        /// The archive file.
        file: PathBuf,
    },
}

impl ImageSource {
    /// Parses a source as given on the command line or in a spec.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| OciError::InvalidReference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(invalid("empty reference"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace or control characters"));
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') => (dir, Some(tag)),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(invalid("oci: needs a directory, e.g. oci:./layout:latest"));
            }
            if tag == Some("") {
                return Err(invalid("empty tag after the last ':'"));
            }
            return Ok(ImageSource::OciLayout {
                dir: PathBuf::from(dir),
                tag: tag.map(str::to_string),
            });
        }
        if let Some(file) = text.strip_prefix("docker-archive:") {
            if file.is_empty() {
                return Err(invalid(
                    "docker-archive: needs a file, e.g. docker-archive:./image.tar",
                ));
            }
            return Ok(ImageSource::DockerArchive {
                file: PathBuf::from(file),
            });
        }
        let reference = Reference::from_str(text).map_err(|e| invalid(&e.to_string()))?;
        if reference
            .repository()
            .bytes()
            .any(|b| b.is_ascii_uppercase())
        {
            return Err(invalid("repository names must be lowercase"));
        }
        // The canonical form is what the store records; it must parse back to the same image.
        if Reference::from_str(&reference.whole()).map(|r| r.whole()) != Ok(reference.whole()) {
            return Err(invalid("not a canonical registry reference"));
        }
        if let Some(digest) = reference.digest() {
            Digest::parse(digest).map_err(|e| invalid(&e.to_string()))?;
        }
        Ok(ImageSource::Registry(reference))
    }

    /// A stable name for the store's ref records (local paths made absolute).
    pub fn canonical_name(&self) -> String {
        match self {
            ImageSource::Registry(r) => r.whole(),
            ImageSource::OciLayout { dir, tag } => {
                let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                match tag {
                    Some(tag) => format!("oci:{}:{tag}", dir.display()),
                    None => format!("oci:{}", dir.display()),
                }
            }
            ImageSource::DockerArchive { file } => {
                let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
                format!("docker-archive:{}", file.display())
            }
        }
    }

    /// The digest pinned by the reference, if any.
    pub fn pinned_digest(&self) -> Option<Digest> {
        match self {
            ImageSource::Registry(r) => r.digest().and_then(|d| Digest::parse(d).ok()),
            _ => None,
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical_name())
    }
}

/// An image platform (`os/arch[/variant]`), linux/amd64 by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split('/').collect();
        let bad = || OciError::InvalidReference {
            reference: text.to_string(),
            reason: "platform must be os/arch[/variant], e.g. linux/amd64".into(),
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_refs_are_normalised() {
        let s = ImageSource::parse("busybox").unwrap();
        assert_eq!(s.canonical_name(), "docker.io/library/busybox:latest");
        let s = ImageSource::parse("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(s.canonical_name(), "127.0.0.1:5000/a/b:v1");
        let d = Digest::of(b"x");
        let s = ImageSource::parse(&format!("localhost:1/x@{d}")).unwrap();
        assert_eq!(s.pinned_digest(), Some(d));
    }

    #[test]
    fn local_sources() {
        assert_eq!(
            ImageSource::parse("oci:/tmp/lay:v2").unwrap(),
            ImageSource::OciLayout {
                dir: "/tmp/lay".into(),
                tag: Some("v2".into())
            }
        );
        assert_eq!(
            ImageSource::parse("oci:/tmp/lay").unwrap(),
            ImageSource::OciLayout {
                dir: "/tmp/lay".into(),
                tag: None
            }
        );
        assert!(ImageSource::parse("docker-archive:").is_err());
        assert!(ImageSource::parse("Bad Name").is_err());
        assert!(ImageSource::parse("x@sha256:zz").is_err());
        // Found by the parse_reference fuzz target: must not parse to an unparsable name.
        assert!(ImageSource::parse("cD/ock").is_err());
    }

    #[test]
    fn platforms() {
        assert_eq!(Platform::parse("linux/amd64").unwrap(), Platform::default());
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
    }
}
