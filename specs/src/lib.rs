//! voidbox-spec: the spec file schema, validation with line/column errors,
//! JSON Schema.
//!
//! A spec is parsed into a position-aware tree first ([`node`]), then
//! decoded and validated by hand ([`decode`]), so that every problem in a
//! file is reported at once with `file:line:column` and, for typos, a
//! did-you-mean. The typed result is [`Spec`].

mod decode;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod node;
mod schema;

use std::path::Path;

pub use decode::is_allowed;
pub use error::{Diagnostic, Diagnostics, SpecError};
pub use model::*;
pub use schema::json_schema;

/// Largest spec file accepted, in bytes.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Reads and validates a spec file. Relative host paths in it are resolved
/// against the file's directory.
pub fn load_file(path: &Path) -> Result<Spec, SpecError> {
    let read_err = |error| SpecError::Read {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(std::io::Error::other("it is a directory")));
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(read_err(std::io::Error::other(format!(
            "larger than {MAX_SPEC_BYTES} bytes"
        ))));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let text = String::from_utf8(bytes).map_err(|_| SpecError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    parse_str(&text, &path.display().to_string(), &base_dir)
}

/// Validates spec text. `file` names it in errors; `base_dir` anchors
/// relative host paths.
pub fn parse_str(text: &str, file: &str, base_dir: &Path) -> Result<Spec, SpecError> {
    let invalid = |items| {
        SpecError::Invalid(Diagnostics {
            file: file.to_string(),
            items,
        })
    };
    let root = node::parse(text).map_err(|d| invalid(vec![d]))?;
    let mut ctx = decode::Ctx::default();
    let spec = decode::decode_spec(&mut ctx, &root, base_dir);
    if !ctx.errors.is_empty() {
        let mut items = ctx.errors;
        items.sort_by_key(|d| d.pos);
        return Err(invalid(items));
    }
    spec.ok_or_else(|| invalid(Vec::new()))
}
