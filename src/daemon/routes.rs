//! The HTTP routes of docs/api.md over a [`Manager`]. Handlers parse and
//! check the request, run the blocking manager call on a blocking thread and
//! turn its result into JSON, NDJSON or a byte stream.

use std::collections::HashMap;
use std::io::{Read, Write};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::client::FileKind;
use crate::service::api::{
    parse_signal, ErrorAnswer, ErrorBody, ExecBody, ExecEvent, ExecList, ExecStarted, SandboxList,
    SignalBody, StdinBody,
};
use crate::service::{Manager, ServiceError, MAX_UPLOAD_BYTES};

/// Largest JSON body.
const MAX_JSON_BODY: usize = 1 << 20;

/// Events or file chunks queued toward a slow client (each at most 64 KiB).
const STREAM_QUEUE: usize = 16;

/// An error answer.
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorAnswer {
            error: ErrorBody {
                code: self.0.code().into(),
                message: self.0.to_string(),
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(ServiceError::BadRequest(m.into()))
}

/// Runs a blocking manager call.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::service::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError(ServiceError::Internal(format!(
                "a request thread failed: {e}"
            )))
        })?
        .map_err(ApiError)
}

/// A JSON body of type `T`, with errors that name the field.
fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| bad(format!("the body is empty: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))
}

fn json_answer(status: StatusCode, v: &impl serde::Serialize) -> Response {
    (status, axum::Json(v)).into_response()
}

/// The routes.
pub fn router(m: Manager) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/sandboxes", post(create).get(list))
        .route("/v1/sandboxes/{id}", get(info).delete(destroy))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/execs", get(execs))
        .route("/v1/sandboxes/{id}/execs/{exec_id}", get(exec_status))
        .route("/v1/sandboxes/{id}/execs/{exec_id}/stdin", post(exec_stdin))
        .route(
            "/v1/sandboxes/{id}/execs/{exec_id}/signal",
            post(exec_signal),
        )
        .route(
            "/v1/sandboxes/{id}/files",
            get(files_get)
                .put(files_put)
                .layer(DefaultBodyLimit::disable()),
        )
        .fallback(|| async {
            ApiError(ServiceError::NotFound(
                "no such endpoint; see GET /v1/openapi.json".into(),
            ))
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(m)
}

async fn openapi() -> Response {
    json_answer(StatusCode::OK, &super::openapi::document())
}

async fn create(State(m): State<Manager>, body: Bytes) -> ApiResult<Response> {
    let info = blocking(move || m.create(&body)).await?;
    Ok(json_answer(StatusCode::CREATED, &info))
}

async fn list(State(m): State<Manager>) -> Response {
    json_answer(
        StatusCode::OK,
        &SandboxList {
            sandboxes: m.list(),
        },
    )
}

async fn info(State(m): State<Manager>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(json_answer(StatusCode::OK, &m.get(&id)?))
}

async fn destroy(State(m): State<Manager>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    blocking(move || m.destroy(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"))
}

/// An NDJSON answer fed by a blocking producer. The producer's first event
/// decides the answer: an error before any event becomes an error status.
async fn ndjson(
    produce: impl FnOnce(
            &mut dyn FnMut(ExecEvent) -> bool,
            &(dyn Fn() -> bool + Sync),
        ) -> crate::service::Result<()>
        + Send
        + 'static,
) -> ApiResult<Response> {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, ServiceError>>(STREAM_QUEUE);
    let feeder = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut emit = |e: ExecEvent| {
            let mut line = serde_json::to_vec(&e).expect("events serialize");
            line.push(b'\n');
            feeder.blocking_send(Ok(Bytes::from(line))).is_ok()
        };
        let wanted = || !feeder.is_closed();
        if let Err(e) = produce(&mut emit, &wanted) {
            let _ = feeder.blocking_send(Err(e));
        }
    });
    drop(tx);
    // Wait for the first item: an early failure is an ordinary error answer.
    let first = match rx.recv().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(ApiError(e)),
        None => {
            return Err(ApiError(ServiceError::Internal(
                "the exec ended without a word".into(),
            )))
        }
    };
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let bytes = match item {
            Ok(b) => b,
            Err(e) => {
                let ev = ExecEvent::Error {
                    error: ErrorBody {
                        code: e.code().into(),
                        message: e.to_string(),
                    },
                };
                let mut line = serde_json::to_vec(&ev).expect("events serialize");
                line.push(b'\n');
                Bytes::from(line)
            }
        };
        Some((Ok::<_, std::io::Error>(bytes), rx))
    });
    let stream = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn exec(
    State(m): State<Manager>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body: ExecBody = json(&body)?;
    if body.background {
        let exec_id = blocking(move || m.exec_background(&id, body)).await?;
        return Ok(json_answer(StatusCode::ACCEPTED, &ExecStarted { exec_id }));
    }
    if wants_ndjson(&headers) {
        return ndjson(move |emit, wanted| m.exec_stream(&id, body, emit, wanted)).await;
    }
    let result = blocking(move || m.exec(&id, body)).await?;
    Ok(json_answer(StatusCode::OK, &result))
}

async fn execs(State(m): State<Manager>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(json_answer(
        StatusCode::OK,
        &ExecList {
            execs: m.execs(&id)?,
        },
    ))
}

fn offset(q: &HashMap<String, String>, name: &str) -> ApiResult<u64> {
    q.get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| bad(format!("{name}: `{v}` is not a byte offset")))
        })
        .transpose()
        .map(Option::unwrap_or_default)
}

fn flag(q: &HashMap<String, String>, name: &str) -> ApiResult<bool> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(bad(format!("{name}: `{v}` is not true or false"))),
    }
}

async fn exec_status(
    State(m): State<Manager>,
    Path((id, exec_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (out, err) = (offset(&q, "stdout_offset")?, offset(&q, "stderr_offset")?);
    if flag(&q, "follow")? {
        // Check the ids before the stream starts.
        m.exec_status(&id, &exec_id, u64::MAX, u64::MAX)?;
        return ndjson(move |emit, wanted| m.exec_follow(&id, &exec_id, out, err, emit, wanted))
            .await;
    }
    Ok(json_answer(
        StatusCode::OK,
        &m.exec_status(&id, &exec_id, out, err)?,
    ))
}

async fn exec_stdin(
    State(m): State<Manager>,
    Path((id, exec_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: StdinBody = json(&body)?;
    let data = body.encoding.decode(&body.data, "data").map_err(bad)?;
    blocking(move || m.exec_stdin(&id, &exec_id, &data, body.eof)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec_signal(
    State(m): State<Manager>,
    Path((id, exec_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: SignalBody = json(&body)?;
    let sig = parse_signal(&body.signal).map_err(bad)?;
    blocking(move || m.exec_signal(&id, &exec_id, sig)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn guest_path(q: &HashMap<String, String>) -> ApiResult<String> {
    match q.get("path") {
        Some(p) if p.starts_with('/') => Ok(p.clone()),
        Some(p) => Err(bad(format!("path: `{p}` must be an absolute guest path"))),
        None => Err(bad("path is required: ?path=/absolute/guest/path")),
    }
}

/// The request body as a blocking reader, bounded to [`MAX_UPLOAD_BYTES`].
struct BodyReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    chunk: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

async fn files_put(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let path = guest_path(&q)?;
    let mode = match q.get("mode") {
        None => 0o644,
        Some(v) => u32::from_str_radix(v.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                bad(format!(
                    "mode: `{v}` is not octal permission bits like 0644"
                ))
            })?,
    };
    let tar = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-tar"));
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    // Feed the body to the blocking writer, stopping past the upload limit.
    let pump = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| format!("reading the request body: {e}"));
            if let Ok(b) = &item {
                total += b.len() as u64;
                if total > MAX_UPLOAD_BYTES {
                    let _ = tx
                        .send(Err(format!(
                            "the upload passed the limit of {MAX_UPLOAD_BYTES} bytes"
                        )))
                        .await;
                    return true;
                }
            }
            if tx.send(item).await.is_err() {
                break;
            }
        }
        false
    });
    let reader_id = id.clone();
    let r = blocking(move || {
        let mut reader = BodyReader {
            rx,
            chunk: Bytes::new(),
        };
        m.write_file(&reader_id, &path, mode, tar, &mut reader)
    })
    .await;
    let too_large = pump.await.unwrap_or(false);
    if too_large {
        return Err(ApiError(ServiceError::TooLarge(format!(
            "the upload passed the limit of {MAX_UPLOAD_BYTES} bytes"
        ))));
    }
    r?;
    Ok(StatusCode::NO_CONTENT)
}

/// A blocking writer into the answer's body.
struct BodyWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn files_get(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let path = guest_path(&q)?;
    if flag(&q, "list")? {
        let list = blocking(move || m.list_dir(&id, &path)).await?;
        return Ok(json_answer(StatusCode::OK, &list));
    }
    let kind = {
        let (m, id, path) = (m.clone(), id.clone(), path.clone());
        blocking(move || m.stat(&id, &path)).await?
    };
    let content_type = match kind {
        FileKind::Dir => "application/x-tar",
        FileKind::File => "application/octet-stream",
        FileKind::Symlink => {
            return Err(ServiceError::PathDenied(format!(
                "`{path}` is a symbolic link: links are not followed out of the guest; read its target's path instead"
            ))
            .into())
        }
        _ => {
            return Err(bad(format!(
                "`{path}` is neither a file nor a directory (a device, socket or FIFO cannot be read)"
            )))
        }
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut w = BodyWriter { tx: tx.clone() };
        if let Err(e) = m.read_file(&id, &path, &mut w) {
            tracing::warn!(%id, %path, "download failed: {e}");
            // An error part-way aborts the answer, so the client sees it incomplete.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response())
}
