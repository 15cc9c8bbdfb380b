//! Where the daemon listens and where clients find it: a Unix socket
//! (`$XDG_RUNTIME_DIR/voidbox/api.sock`, `/run/voidbox/api.sock` for root)
//! or `http://127.0.0.1:PORT` with a bearer token; `VOIDBOX_HOST` and
//! `VOIDBOX_TOKEN`/`VOIDBOX_TOKEN_FILE` point clients at it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// `host:port` over plain HTTP (loopback; a token is required).
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// The default socket: `$XDG_RUNTIME_DIR/voidbox/api.sock`, or
/// `/run/voidbox/api.sock` for root or without `XDG_RUNTIME_DIR`.
pub fn default_socket() -> PathBuf {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) if !root => PathBuf::from(dir).join("voidbox/api.sock"),
        _ => PathBuf::from("/run/voidbox/api.sock"),
    }
}

impl Endpoint {
    /// `unix:///path` or `http://host:port`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "VOIDBOX_HOST `{s}`: a Unix socket needs an absolute path (unix:///run/voidbox/api.sock)"
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let addr = rest.trim_end_matches('/');
            if addr.is_empty() || addr.contains('/') {
                return Err(format!("VOIDBOX_HOST `{s}`: expected http://HOST:PORT"));
            }
            return Ok(Endpoint::Tcp(addr.to_string()));
        }
        Err(format!(
            "VOIDBOX_HOST `{s}` is neither unix:///path/to/api.sock nor http://HOST:PORT"
        ))
    }

    /// `VOIDBOX_HOST`, else the default socket.
    pub fn from_env() -> Result<Endpoint, String> {
        match std::env::var("VOIDBOX_HOST") {
            Ok(v) if !v.is_empty() => Endpoint::parse(&v),
            _ => Ok(Endpoint::Unix(default_socket())),
        }
    }
}

/// The client's token: `VOIDBOX_TOKEN`, else the file named by `VOIDBOX_TOKEN_FILE`.
pub fn token_from_env() -> Result<Option<String>, String> {
    if let Ok(t) = std::env::var("VOIDBOX_TOKEN") {
        if !t.is_empty() {
            return Ok(Some(t));
        }
    }
    match std::env::var_os("VOIDBOX_TOKEN_FILE") {
        Some(f) if !f.is_empty() => std::fs::read_to_string(&f)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| {
                format!(
                    "cannot read VOIDBOX_TOKEN_FILE {}: {e}",
                    Path::new(&f).display()
                )
            }),
        _ => Ok(None),
    }
}

/// Reads the token file, or creates it (32 random bytes, hex, mode 0600).
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim().to_string();
            if t.len() < 16 {
                return Err(std::io::Error::other(format!(
                    "the token in {} is shorter than 16 characters; remove the file to have a new one made",
                    path.display()
                )));
            }
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} is readable by others (mode {:o}); `chmod 600` it",
                    path.display(),
                    mode & 0o777
                )));
            }
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut bytes);
            let token = hex::encode(bytes);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            writeln!(f, "{token}")?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_or_say_what_is_expected() {
        assert_eq!(
            Endpoint::parse("unix:///run/x.sock"),
            Ok(Endpoint::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080/"),
            Ok(Endpoint::Tcp("127.0.0.1:8080".into()))
        );
        assert!(Endpoint::parse("unix://rel")
            .unwrap_err()
            .contains("absolute"));
        assert!(Endpoint::parse("tcp://x").unwrap_err().contains("unix:///"));
    }

    #[test]
    fn a_token_file_is_made_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/token");
        let t = load_or_create_token(&p).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(&p).unwrap(), t);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_token(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
    }
}
