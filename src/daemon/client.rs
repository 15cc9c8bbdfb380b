//! A blocking Rust client of the daemon's API (docs/api.md), for
//! `voidbox sandbox ...`, `voidbox run --daemon` paths and `voidbox mcp
//! --daemon`. One connection per request, over the Unix socket or loopback
//! TCP with the bearer token.

use std::io::{Read, Write};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::endpoint::{token_from_env, Endpoint};
use crate::service::api::{
    ErrorAnswer, ExecBody, ExecEvent, ExecResult, ExecStarted, ExecStatus, FileList, SandboxInfo,
    SandboxList,
};
use crate::service::{Result, ServiceError};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A client of one daemon.
pub struct DaemonClient {
    endpoint: Endpoint,
    token: Option<String>,
    rt: tokio::runtime::Runtime,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// Percent-encodes a query value.
fn q(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl DaemonClient {
    /// The daemon of `VOIDBOX_HOST` (or the default socket) with the token of
    /// `VOIDBOX_TOKEN`/`VOIDBOX_TOKEN_FILE`.
    pub fn from_env() -> Result<Self> {
        let endpoint = Endpoint::from_env().map_err(ServiceError::BadRequest)?;
        let token = token_from_env().map_err(ServiceError::BadRequest)?;
        Self::new(endpoint, token)
    }

    /// A client of `endpoint`.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(internal)?;
        Ok(DaemonClient {
            endpoint,
            token,
            rt,
        })
    }

    /// Where it connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ServiceError {
        ServiceError::Unavailable(format!(
            "no voidbox daemon answers at {} ({e}); start one with `voidbox serve` (or point VOIDBOX_HOST at it)",
            self.endpoint
        ))
    }

    /// Whether a daemon answers.
    pub fn reachable(&self) -> bool {
        self.list().is_ok()
    }

    async fn send(&self, req: Request<Body>) -> Result<hyper::Response<hyper::body::Incoming>> {
        macro_rules! handshake {
            ($stream:expr) => {{
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new($stream))
                        .await
                        .map_err(|e| self.unreachable(e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| self.unreachable(e))
            }};
        }
        match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                handshake!(s)
            }
            Endpoint::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a.as_str())
                    .await
                    .map_err(|e| self.unreachable(e))?;
                handshake!(s)
            }
        }
    }

    fn request(&self, method: Method, path: &str, content_type: &str, body: Body) -> Request<Body> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://voidbox{path}"))
            .header(hyper::header::HOST, "voidbox")
            .header(hyper::header::CONTENT_TYPE, content_type);
        if let Some(t) = &self.token {
            b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(body).expect("a valid request")
    }

    fn json_body(v: &impl serde::Serialize) -> Body {
        Full::new(Bytes::from(serde_json::to_vec(v).expect("serializes")))
            .map_err(|never| match never {})
            .boxed()
    }

    fn empty() -> Body {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    }

    async fn error_of(
        status: StatusCode,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> ServiceError {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        match serde_json::from_slice::<ErrorAnswer>(&body) {
            Ok(a) => ServiceError::from_code(&a.error.code, a.error.message),
            Err(_) => ServiceError::Internal(format!(
                "the daemon answered {status}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// A JSON call; `None` for a 204.
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<T>> {
        self.rt.block_on(async {
            let body = body.map(Self::json_body).unwrap_or_else(Self::empty);
            let resp = self
                .send(self.request(method, path, "application/json", body))
                .await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(Self::error_of(status, resp).await);
            }
            if status == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(internal)?
                .to_bytes();
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| internal(format!("a bad answer from the daemon: {e}")))
        })
    }

    fn call_some<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        self.call(method, path, body)?
            .ok_or_else(|| internal("the daemon answered without a body"))
    }

    /// `POST /v1/sandboxes`.
    pub fn create(&self, body: &serde_json::Value) -> Result<SandboxInfo> {
        self.call_some(Method::POST, "/v1/sandboxes", Some(body))
    }

    /// `GET /v1/sandboxes`.
    pub fn list(&self) -> Result<Vec<SandboxInfo>> {
        Ok(self
            .call_some::<SandboxList>(Method::GET, "/v1/sandboxes", None)?
            .sandboxes)
    }

    /// `GET /v1/sandboxes/{id}`.
    pub fn get(&self, id: &str) -> Result<SandboxInfo> {
        self.call_some(Method::GET, &format!("/v1/sandboxes/{}", q(id)), None)
    }

    /// `DELETE /v1/sandboxes/{id}`.
    pub fn destroy(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/v1/sandboxes/{}", q(id)), None)
            .map(|_| ())
    }

    /// `POST .../exec`, waiting for the result.
    pub fn exec(&self, id: &str, body: &ExecBody) -> Result<ExecResult> {
        let v = serde_json::to_value(body).map_err(internal)?;
        self.call_some(
            Method::POST,
            &format!("/v1/sandboxes/{}/exec", q(id)),
            Some(&v),
        )
    }

    /// `POST .../exec` with `background: true`.
    pub fn exec_background(&self, id: &str, body: &ExecBody) -> Result<String> {
        let mut body = body.clone();
        body.background = true;
        let v = serde_json::to_value(&body).map_err(internal)?;
        Ok(self
            .call_some::<ExecStarted>(
                Method::POST,
                &format!("/v1/sandboxes/{}/exec", q(id)),
                Some(&v),
            )?
            .exec_id)
    }

    /// `GET .../execs/{exec_id}`.
    pub fn exec_status(
        &self,
        id: &str,
        exec_id: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<ExecStatus> {
        self.call_some(
            Method::GET,
            &format!(
                "/v1/sandboxes/{}/execs/{}?stdout_offset={stdout_offset}&stderr_offset={stderr_offset}",
                q(id),
                q(exec_id)
            ),
            None,
        )
    }

    /// `POST .../exec` as an NDJSON stream: `on_event` gets every event.
    pub fn exec_stream(
        &self,
        id: &str,
        body: &ExecBody,
        mut on_event: impl FnMut(ExecEvent),
    ) -> Result<()> {
        let path = format!("/v1/sandboxes/{}/exec", q(id));
        self.rt.block_on(async {
            let mut req = self.request(
                Method::POST,
                &path,
                "application/json",
                Self::json_body(body),
            );
            req.headers_mut().insert(
                hyper::header::ACCEPT,
                hyper::header::HeaderValue::from_static("application/x-ndjson"),
            );
            let resp = self.send(req).await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(Self::error_of(status, resp).await);
            }
            let mut body = resp.into_body();
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| internal(format!("the exec stream broke: {e}")))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let ev: ExecEvent = serde_json::from_slice(&line)
                        .map_err(|e| internal(format!("a bad event from the daemon: {e}")))?;
                    if let ExecEvent::Error { error } = ev {
                        return Err(ServiceError::from_code(&error.code, error.message));
                    }
                    on_event(ev);
                }
            }
            Ok(())
        })
    }

    /// `PUT .../files`: streams `data` into the guest file `path` (or, with
    /// `tar`, unpacks it into the directory `path`).
    pub fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: u32,
        tar: bool,
        data: Box<dyn Read + Send>,
    ) -> Result<()> {
        let url = format!(
            "/v1/sandboxes/{}/files?path={}&mode={mode:o}",
            q(id),
            q(path)
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Frame<Bytes>>>(8);
        // The file is read on a thread of its own; its chunks stream as the body.
        std::thread::spawn(move || {
            let mut data = data;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match data.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n]))))
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let body = StreamBody::new(stream).boxed();
        let ct = if tar {
            "application/x-tar"
        } else {
            "application/octet-stream"
        };
        self.rt.block_on(async {
            let resp = self.send(self.request(Method::PUT, &url, ct, body)).await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(Self::error_of(status, resp).await);
            }
            Ok(())
        })
    }

    /// `GET .../files`: streams the guest file (or a directory's tar) into
    /// `out`; answers whether it was a directory.
    pub fn read_file(&self, id: &str, path: &str, out: &mut dyn Write) -> Result<bool> {
        let url = format!("/v1/sandboxes/{}/files?path={}", q(id), q(path));
        self.rt.block_on(async {
            let resp = self
                .send(self.request(Method::GET, &url, "application/json", Self::empty()))
                .await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(Self::error_of(status, resp).await);
            }
            let dir = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/x-tar"));
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| internal(format!("the download broke: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    out.write_all(&data)
                        .map_err(|e| internal(format!("writing the download: {e}")))?;
                }
            }
            Ok(dir)
        })
    }

    /// `GET .../files?list=true`.
    pub fn list_dir(&self, id: &str, path: &str) -> Result<FileList> {
        self.call_some(
            Method::GET,
            &format!("/v1/sandboxes/{}/files?path={}&list=true", q(id), q(path)),
            None,
        )
    }
}
