//! The OpenAPI 3.1 document served at `GET /v1/openapi.json` (docs/api.md
//! is the prose version of the same contract).

use serde_json::{json, Value};

fn error_responses() -> Value {
    let err = json!({"$ref": "#/components/responses/Error"});
    json!({"400": err, "401": err, "403": err, "404": err, "409": err, "413": err, "429": err, "500": err, "503": err, "504": err})
}

fn op(summary: &str, ok: (&str, Value)) -> Value {
    let mut responses = error_responses();
    responses[ok.0] = ok.1;
    json!({"summary": summary, "responses": responses})
}

fn with_body(mut op: Value, schema: &str) -> Value {
    op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    op
}

fn schema_ok(desc: &str, schema: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn params(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect(),
    )
}

fn query(name: &str, ty: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}, "description": desc})
}

/// The document.
pub fn document() -> Value {
    let no_content = json!({"description": "done"});
    let mut files_get = op(
        "Download a file (raw bytes) or a directory (tar), or list a directory",
        (
            "200",
            json!({"description": "the bytes, a tar, or with list=true a FileList", "content": {
            "application/octet-stream": {}, "application/x-tar": {},
            "application/json": {"schema": {"$ref": "#/components/schemas/FileList"}}}}),
        ),
    );
    files_get["parameters"] = json!([
        query("path", "string", "absolute guest path"),
        query("list", "boolean", "list one level of a directory")
    ]);
    let mut files_put = op("Upload a file (raw body) or unpack a tar into a directory (Content-Type: application/x-tar)", ("204", no_content.clone()));
    files_put["parameters"] = json!([
        query("path", "string", "absolute guest path"),
        query(
            "mode",
            "string",
            "octal permission bits of a file, default 0644"
        )
    ]);
    files_put["requestBody"] = json!({"required": true, "content": {"application/octet-stream": {}, "application/x-tar": {}}});
    let mut status = op(
        "A background process's state and output from byte offsets; follow=true streams NDJSON events until it exits",
        ("200", schema_ok("state and output", "ExecStatus")),
    );
    status["parameters"] = json!([
        query("stdout_offset", "integer", "byte offset in stdout"),
        query("stderr_offset", "integer", "byte offset in stderr"),
        query("follow", "boolean", "stream events (application/x-ndjson)")
    ]);
    let mut exec = with_body(
        op(
            "Run a command: the answer waits for it, streams NDJSON events with Accept: application/x-ndjson, or with background=true answers 202 with an exec id",
            ("200", schema_ok("the result (or an NDJSON stream of ExecEvent)", "ExecResult")),
        ),
        "ExecBody",
    );
    exec["responses"]["202"] = schema_ok("started in the background", "ExecStarted");
    json!({
        "openapi": "3.1.0",
        "info": {"title": "voidbox", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Live microVM sandboxes (docs/api.md)."},
        "paths": {
            "/v1/sandboxes": {
                "post": with_body(op("Create a sandbox; answers once its agent is ready", ("201", schema_ok("created", "Sandbox"))), "CreateBody"),
                "get": op("List sandboxes", ("200", schema_ok("all sandboxes", "SandboxList"))),
            },
            "/v1/sandboxes/{id}": {
                "parameters": params(&["id"]),
                "get": op("One sandbox", ("200", schema_ok("the sandbox", "Sandbox"))),
                "delete": op("Destroy a sandbox", ("204", no_content.clone())),
            },
            "/v1/sandboxes/{id}/exec": {"parameters": params(&["id"]), "post": exec},
            "/v1/sandboxes/{id}/execs": {"parameters": params(&["id"]),
                "get": op("Background processes", ("200", schema_ok("the list", "ExecList")))},
            "/v1/sandboxes/{id}/execs/{exec_id}": {"parameters": params(&["id", "exec_id"]), "get": status},
            "/v1/sandboxes/{id}/execs/{exec_id}/stdin": {"parameters": params(&["id", "exec_id"]),
                "post": with_body(op("Write to a background process's stdin", ("204", no_content.clone())), "StdinBody")},
            "/v1/sandboxes/{id}/execs/{exec_id}/signal": {"parameters": params(&["id", "exec_id"]),
                "post": with_body(op("Signal a background process", ("204", no_content.clone())), "SignalBody")},
            "/v1/sandboxes/{id}/files": {"parameters": params(&["id"]), "get": files_get, "put": files_put},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {
            "responses": {"Error": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "required on TCP listeners"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string", "enum": ["bad_request", "unauthorized", "command_denied", "path_denied", "not_found", "sandbox_dead", "too_large", "too_many_sandboxes", "too_many_execs", "out_of_capacity", "timeout", "unavailable", "internal"]},
                    "message": {"type": "string"}}}}},
                "CreateBody": {"type": "object", "additionalProperties": false, "description": "the spec's sandbox mapping (docs/spec.md) without host paths, plus skills, timeout_secs (lifetime) and idle_timeout_secs", "properties": {
                    "image": {"type": "string"}, "guest_image": {"type": "string"},
                    "memory_mb": {"type": "integer", "minimum": 64, "maximum": 262144, "default": 512},
                    "vcpus": {"type": "integer", "minimum": 1, "maximum": 32, "default": 1},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "allow_commands": {"type": "array", "items": {"type": "string"}},
                    "user": {"type": "string", "default": "65534:65534"},
                    "max_output_mb": {"type": "integer"}, "network": {"type": "boolean", "const": false},
                    "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 604800, "default": 3600},
                    "idle_timeout_secs": {"type": "integer", "minimum": 1, "maximum": 604800, "default": 600},
                    "skills": {"type": "array", "items": {"type": "object", "required": ["image", "mount"], "properties": {"image": {"type": "string"}, "mount": {"type": "string"}}}}}},
                "Sandbox": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"type": "string", "enum": ["running", "dead"]},
                    "created_at": {"type": "string", "format": "date-time"}, "expires_at": {"type": "string", "format": "date-time"},
                    "timeout_secs": {"type": "integer"}, "idle_timeout_secs": {"type": "integer"},
                    "image": {"type": ["string", "null"]}, "memory_mb": {"type": "integer"}, "vcpus": {"type": "integer"},
                    "boot_ms": {"type": "integer"}, "launcher": {"type": "string"}, "error": {"type": ["string", "null"]}}},
                "SandboxList": {"type": "object", "properties": {"sandboxes": {"type": "array", "items": {"$ref": "#/components/schemas/Sandbox"}}}},
                "ExecBody": {"type": "object", "additionalProperties": false, "properties": {
                    "argv": {"type": "array", "items": {"type": "string"}}, "shell": {"type": "string"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "cwd": {"type": "string"}, "user": {"type": "string"},
                    "timeout_secs": {"type": "integer", "minimum": 1}, "stdin": {"type": "string"},
                    "encoding": {"type": "string", "enum": ["utf8", "base64"]}, "background": {"type": "boolean"}}},
                "ExecResult": {"type": "object", "properties": {
                    "exit_code": {"type": ["integer", "null"]}, "signal": {"type": ["integer", "null"]},
                    "stdout": {"type": "string"}, "stderr": {"type": "string"}, "duration_ms": {"type": "integer"},
                    "truncated": {"type": "boolean"}, "timed_out": {"type": "boolean"}, "encoding": {"type": "string"}}},
                "ExecEvent": {"type": "object", "required": ["type"], "properties": {
                    "type": {"type": "string", "enum": ["started", "stdout", "stderr", "exit", "error"]},
                    "pid": {"type": "integer"}, "data": {"type": "string"}, "exit_code": {"type": ["integer", "null"]},
                    "signal": {"type": ["integer", "null"]}, "duration_ms": {"type": "integer"}, "timed_out": {"type": "boolean"},
                    "error": {"type": "object"}}},
                "ExecStarted": {"type": "object", "properties": {"exec_id": {"type": "string"}}},
                "ExecStatus": {"type": "object", "properties": {
                    "exec_id": {"type": "string"}, "argv": {"type": "array", "items": {"type": "string"}},
                    "state": {"type": "string", "enum": ["running", "exited"]},
                    "exit_code": {"type": ["integer", "null"]}, "signal": {"type": ["integer", "null"]}, "timed_out": {"type": "boolean"},
                    "stdout": {"type": "string"}, "stderr": {"type": "string"},
                    "stdout_next": {"type": "integer"}, "stderr_next": {"type": "integer"},
                    "truncated": {"type": "boolean"}, "encoding": {"type": "string"}}},
                "ExecList": {"type": "object", "properties": {"execs": {"type": "array", "items": {"$ref": "#/components/schemas/ExecStatus"}}}},
                "StdinBody": {"type": "object", "additionalProperties": false, "properties": {
                    "data": {"type": "string"}, "encoding": {"type": "string", "enum": ["utf8", "base64"]}, "eof": {"type": "boolean"}}},
                "SignalBody": {"type": "object", "additionalProperties": false, "required": ["signal"], "properties": {
                    "signal": {"type": ["string", "integer"]}}},
                "FileList": {"type": "object", "properties": {"truncated": {"type": "boolean"}, "entries": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "type": {"type": "string", "enum": ["file", "dir", "symlink", "other"]},
                    "size": {"type": "integer"}, "mode": {"type": "integer"}, "mtime": {"type": "integer"}}}}}},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let doc = super::document();
        for path in [
            "/v1/sandboxes",
            "/v1/sandboxes/{id}",
            "/v1/sandboxes/{id}/exec",
            "/v1/sandboxes/{id}/execs",
            "/v1/sandboxes/{id}/execs/{exec_id}",
            "/v1/sandboxes/{id}/execs/{exec_id}/stdin",
            "/v1/sandboxes/{id}/execs/{exec_id}/signal",
            "/v1/sandboxes/{id}/files",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is not documented");
        }
        // Every $ref resolves.
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/").skip(1) {
            let name = piece.split('"').next().unwrap();
            let (kind, item) = name.split_once('/').unwrap();
            assert!(
                doc["components"][kind][item].is_object(),
                "dangling $ref {name}"
            );
        }
    }
}
