//! Text for the model: long output cut to its head and tail, and service
//! errors worded in terms of the MCP tools rather than the HTTP API.

use crate::service::ServiceError;

/// Output kept per stream of a `sandbox_exec` answer: what a model can use
/// without flooding its context.
pub const MAX_STREAM_BYTES: usize = 32 * 1024;

/// Cuts `text` to at most about `max` bytes, keeping its first and last halves
/// around a marker that says how many bytes were left out. Cuts fall on
/// character boundaries. Answers whether anything was cut.
pub fn truncate_middle(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let head_end = floor_char_boundary(text, max / 2);
    let tail_start = ceil_char_boundary(text, text.len() - (max - max / 2));
    let omitted = tail_start - head_end;
    let out = format!(
        "{}\n[... {omitted} bytes omitted ...]\n{}",
        &text[..head_end],
        &text[tail_start..]
    );
    (out, true)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Where the service's messages name an HTTP request, the tool that does it.
const HTTP_TO_TOOLS: [(&str, &str); 3] = [
    (
        "list them with GET /v1/sandboxes",
        "call sandbox_list to see the sandboxes, or sandbox_create for a new one",
    ),
    (
        "upload files with PUT /v1/sandboxes/{id}/files",
        "write files with sandbox_write_file",
    ),
    (
        "download files with GET /v1/sandboxes/{id}/files",
        "read files with sandbox_read_file",
    ),
];

/// The message of a failed tool call: the service's own message (it names the
/// problem and the fix), with HTTP requests replaced by the tools that do the
/// same, and "daemon" by "server" when the sandboxes live in this process.
pub fn explain(e: &ServiceError, standalone: bool) -> String {
    let mut m = e.to_string();
    for (http, tool) in HTTP_TO_TOOLS {
        m = m.replace(http, tool);
    }
    m = replace_delete_requests(&m);
    if standalone {
        m = m
            .replace("start the daemon with", "start `voidbox mcp` with")
            .replace("this daemon", "this server")
            .replace("the daemon", "the server");
    }
    if matches!(e, ServiceError::NotFound(_))
        && m.starts_with("no sandbox ")
        && !m.contains("sandbox_list")
    {
        m.push_str("; call sandbox_list to see the sandboxes, or sandbox_create for a new one");
    }
    m
}

/// `(DELETE /v1/sandboxes/sb-...)` becomes `(sandbox_destroy)`.
fn replace_delete_requests(m: &str) -> String {
    const DELETE: &str = "DELETE /v1/sandboxes/";
    let mut out = String::with_capacity(m.len());
    let mut rest = m;
    while let Some(at) = rest.find(DELETE) {
        out.push_str(&rest[..at]);
        out.push_str("sandbox_destroy");
        let after = &rest[at + DELETE.len()..];
        let id_len = after
            .find(|c: char| c == ')' || c.is_whitespace() || c == ';' || c == ',')
            .unwrap_or(after.len());
        rest = &after[id_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(truncate_middle("hello", 10), ("hello".into(), false));
        let exact = "x".repeat(MAX_STREAM_BYTES);
        assert_eq!(truncate_middle(&exact, MAX_STREAM_BYTES), (exact, false));
    }

    #[test]
    fn long_text_keeps_head_and_tail_around_a_counted_marker() {
        let text = format!(
            "{}{}{}",
            "a".repeat(1000),
            "m".repeat(100_000),
            "z".repeat(1000)
        );
        let (out, cut) = truncate_middle(&text, 2000);
        assert!(cut);
        assert!(out.starts_with(&"a".repeat(1000)), "head kept");
        assert!(out.ends_with(&"z".repeat(1000)), "tail kept");
        assert!(
            out.contains("\n[... 100000 bytes omitted ...]\n"),
            "{out:.80}"
        );
        // Kept bytes plus omitted bytes are the whole text.
        let marker = "\n[... 100000 bytes omitted ...]\n".len();
        assert_eq!(out.len() - marker + 100_000, text.len());
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // Three-byte characters: no cut point is a boundary by chance.
        let text = "€".repeat(10_000);
        for max in [1, 2, 5, 100, 1001] {
            let (out, cut) = truncate_middle(&text, max);
            assert!(cut);
            let (head, rest) = out.split_once("\n[... ").unwrap();
            let (count, tail) = rest.split_once(" bytes omitted ...]\n").unwrap();
            let omitted: usize = count.parse().unwrap();
            assert_eq!(head.len() + omitted + tail.len(), text.len(), "max {max}");
            assert!(
                head.len() <= max / 2 && tail.len() <= max - max / 2,
                "max {max}"
            );
        }
    }

    #[test]
    fn unknown_sandboxes_point_to_sandbox_list() {
        // The Manager's own wording.
        let e = ServiceError::NotFound(
            "no sandbox `sb-1`; list them with GET /v1/sandboxes (it may have passed its lifetime or idle limit)".into(),
        );
        let m = explain(&e, true);
        assert!(m.starts_with("no sandbox `sb-1`"), "{m}");
        assert!(m.contains("call sandbox_list"), "{m}");
        assert!(!m.contains("/v1/"), "{m}");
        // A message without the HTTP hint gets the tools' hint.
        let m = explain(&ServiceError::NotFound("no sandbox `sb-2`".into()), true);
        assert!(
            m.contains("sandbox_list") && m.contains("sandbox_create"),
            "{m}"
        );
        // A missing guest file is no sandbox matter.
        let m = explain(&ServiceError::NotFound("/tmp/x: no such file".into()), true);
        assert_eq!(m, "/tmp/x: no such file");
    }

    #[test]
    fn dead_sandboxes_point_to_sandbox_destroy() {
        let e = ServiceError::SandboxDead(
            "sandbox `sb-1` is dead: it was stopped; delete it (DELETE /v1/sandboxes/sb-1) and create a new one".into(),
        );
        assert_eq!(
            explain(&e, true),
            "sandbox `sb-1` is dead: it was stopped; delete it (sandbox_destroy) and create a new one"
        );
    }

    #[test]
    fn limits_name_this_server_when_standalone() {
        let e = ServiceError::TooManySandboxes(
            "4 sandboxes are running or starting, the limit of this daemon (--max-sandboxes 4); delete one or start the daemon with a higher limit".into(),
        );
        let m = explain(&e, true);
        assert!(m.contains("limit of this server"), "{m}");
        assert!(m.contains("start `voidbox mcp` with a higher limit"), "{m}");
        // A daemon's message is about the daemon.
        assert!(explain(&e, false).contains("this daemon"));
    }
}
