//! Spec validation: each error class, positions, did-you-mean, all errors at
//! once, defaults, JSON input and the JSON Schema.

use std::path::Path;

use voidbox_spec::{load_file, parse_str, Command, Diagnostic, Kind, SpecError};

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse_str(text, "t.yaml", Path::new("/base")) {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(SpecError::Invalid(d)) => d.items,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn one_error(text: &str) -> Diagnostic {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

const HEADER: &str = "api_version: v1\nkind: workflow\nname: t\n";

fn workflow(body: &str) -> String {
    format!("{HEADER}workflow:\n  steps:\n    - name: a\n      shell: echo hi\n{body}")
}

#[test]
fn minimal_workflow_gets_documented_defaults() {
    let spec = parse_str(&workflow(""), "t.yaml", Path::new("/base")).unwrap();
    assert_eq!(spec.kind, Kind::Workflow);
    assert_eq!(spec.sandbox.memory_mb, 512);
    assert_eq!(spec.sandbox.vcpus, 1);
    assert_eq!(spec.sandbox.timeout_secs, 600);
    assert_eq!(spec.sandbox.user, "65534:65534");
    assert!(!spec.sandbox.network);
    assert!(spec.sandbox.allow_commands.is_none());
    assert!(spec.sandbox.image.is_none());
    let step = &spec.workflow.as_ref().unwrap().steps[0];
    assert_eq!(step.command(), Command::Shell("echo hi"));
    assert_eq!(step.argv(), ["/bin/sh", "-c", "echo hi"]);
}

#[test]
fn full_spec_round_trips_every_field() {
    let text = r#"
api_version: v1
kind: workflow
name: ci-build
sandbox:
  image: toolchain:1
  guest_image: oci:/tmp/guest:v1
  memory_mb: 1024
  vcpus: 2
  env: {CC: gcc, LEVEL: 2}
  inputs: [{host: src, guest: /work/src}]
  outputs: [{guest: /work/out, host: out}]
  allow_commands: [/usr/bin/make, /bin/sh]
  user: "0:0"
  timeout_secs: 120
  max_output_mb: 100
  network: false
skills:
  - {image: tools:1, mount: /skills/tools/}
workflow:
  steps:
    - name: build
      run: {program: make, args: [-j, 2, all]}
      env: {V: 1}
      cwd: /work/src
      timeout_secs: 60
    - name: list
      shell: ls /work/out
      depends_on: [build]
      stdin_from: build
"#;
    let spec = parse_str(text, "t.yaml", Path::new("/base")).unwrap();
    let sb = &spec.sandbox;
    assert_eq!(sb.image.as_deref(), Some("toolchain:1"));
    assert_eq!(sb.memory_mb, 1024);
    assert_eq!(sb.env["LEVEL"], "2");
    assert_eq!(sb.inputs[0].host, Path::new("/base/src"));
    assert_eq!(sb.outputs[0].host, Path::new("/base/out"));
    assert_eq!(sb.user, "0:0");
    assert_eq!(sb.max_output_mb, 100);
    assert_eq!(spec.skills[0].mount, "/skills/tools");
    assert_eq!(sb.guest_image.as_deref(), Some("oci:/tmp/guest:v1"));
    let rel = parse_str(
        "api_version: v1\nkind: sandbox\nname: s\nsandbox: {image: 'oci:images/gcc:1'}\n",
        "t",
        Path::new("/base"),
    )
    .unwrap();
    assert_eq!(rel.sandbox.image.as_deref(), Some("oci:/base/images/gcc:1"));
    let up = parse_str(
        "api_version: v1\nkind: sandbox\nname: s\nsandbox: {image: 'oci:../x/./img:1', inputs: [{host: ../in, guest: /in}]}\n",
        "t",
        Path::new("/base/examples"),
    )
    .unwrap();
    assert_eq!(up.sandbox.image.as_deref(), Some("oci:/base/x/img:1"));
    assert_eq!(up.sandbox.inputs[0].host, Path::new("/base/in"));
    let steps = &spec.workflow.unwrap().steps;
    assert_eq!(steps[0].argv(), ["make", "-j", "2", "all"]);
    assert_eq!(steps[0].timeout_secs, Some(60));
    assert_eq!(steps[1].stdin_from.as_deref(), Some("build"));
}

#[test]
fn unknown_field_has_position_and_did_you_mean() {
    let d = one_error(&workflow("sandbox:\n  memroy_mb: 256\n"));
    assert_eq!((d.pos.line, d.pos.col), (9, 3));
    assert_eq!(d.path, "sandbox.memroy_mb");
    assert!(
        d.message.contains("unknown field `memroy_mb`"),
        "{}",
        d.message
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `memory_mb`?"));
}

#[test]
fn misplaced_field_says_where_it_belongs() {
    let d = one_error(&workflow("memory_mb: 256\n"));
    assert_eq!(
        d.hint.as_deref(),
        Some("`memory_mb` belongs under `sandbox:`")
    );
}

#[test]
fn wrong_types_are_reported_with_expected_type() {
    let e = errors(&workflow(
        "sandbox:\n  memory_mb: lots\n  vcpus: true\n  network: \"no\"\n  env: [A]\n",
    ));
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0]
        .message
        .contains("expected an integer between 64 and 262144"));
    assert!(e[0].message.contains("\"lots\""));
    assert_eq!(e[0].pos.line, 9);
    assert!(e[1].message.contains("found the boolean true"));
    assert!(e[2].message.contains("expected true or false"));
    assert!(e[3].message.contains("expected a mapping"));
}

#[test]
fn quoted_number_hint_for_string_fields() {
    let d = one_error(&format!(
        "{HEADER}workflow:\n  steps:\n    - name: 12\n      shell: x\n"
    ));
    assert!(d.message.contains("expected a string"), "{}", d.message);
    assert_eq!(d.hint.as_deref(), Some("quote it: \"12\""));
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let text = "api_version: v2\nkind: workflwo\nname: 'bad name'\nsandbox:\n  vcpus: 0\n  netwrok: false\nworkflow:\n  steps: []\n";
    let e = errors(text);
    let lines: Vec<usize> = e.iter().map(|d| d.pos.line).collect();
    assert_eq!(lines, [1, 2, 3, 5, 6, 8], "{e:#?}");
    assert!(e[1].hint.as_deref().unwrap().contains("`workflow`"));
    assert!(e[4].hint.as_deref().unwrap().contains("`network`"));
}

#[test]
fn missing_required_fields() {
    let e = errors("kind: workflow\n");
    let msgs: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
    assert!(
        msgs.contains(&"missing required field `api_version`"),
        "{msgs:?}"
    );
    assert!(msgs.contains(&"missing required field `name`"), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("needs a `workflow` section")),
        "{msgs:?}"
    );
}

#[test]
fn network_true_is_refused_clearly() {
    let d = one_error(&workflow("sandbox:\n  network: true\n"));
    assert!(d.message.contains("`network: true` is not supported yet"));
    assert!(d.hint.unwrap().contains("network: false"));
}

#[test]
fn ranges_are_enforced() {
    let e = errors(&workflow(
        "sandbox:\n  memory_mb: 16\n  vcpus: 33\n  timeout_secs: 0\n  max_output_mb: 0\n",
    ));
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].message.contains("16 is out of range"));
    assert_eq!(e[3].path, "sandbox.max_output_mb");
    let e = errors(&workflow("sandbox:\n  max_output_mb: 1048577\n"));
    assert!(e[0].message.contains("between 1 and 1048576"), "{e:#?}");
    let d = one_error(&workflow("sandbox:\n  max_output_mb: \"4G\"\n"));
    assert_eq!(d.path, "sandbox.max_output_mb");
}

#[test]
fn max_output_mb_defaults_to_4096_and_is_read() {
    let spec = parse_str(&workflow(""), "t.yaml", Path::new("/base")).unwrap();
    assert_eq!(spec.sandbox.max_output_mb, 4096);
    let text = workflow("sandbox:\n  max_output_mb: 64\n");
    let spec = parse_str(&text, "t.yaml", Path::new("/base")).unwrap();
    assert_eq!(spec.sandbox.max_output_mb, 64);
}

#[test]
fn step_rules() {
    let text = format!(
        "{HEADER}workflow:\n  steps:\n    - name: a\n      shell: y\n    - name: a\n      shell: z\n    - name: b\n      run: {{program: x}}\n      shell: y\n    - name: c\n    - name: d\n      shell: q\n      depends_on: [bulid, d]\n      stdin_from: a\n"
    );
    let e = errors(&text);
    let msgs: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
    assert!(msgs.iter().any(|m| m.contains("not both")), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("duplicate step name `a`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("needs `run` or `shell`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("no step is named `bulid`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("depends on itself")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("not one of this step's `depends_on`")),
        "{msgs:?}"
    );
}

#[test]
fn dependency_cycle_is_named() {
    let text = format!(
        "{HEADER}workflow:\n  steps:\n    - {{name: a, shell: x, depends_on: [c]}}\n    - {{name: b, shell: x, depends_on: [a]}}\n    - {{name: c, shell: x, depends_on: [b]}}\n"
    );
    let d = one_error(&text);
    assert!(d.message.starts_with("dependency cycle: "), "{}", d.message);
    for n in ["a", "b", "c"] {
        assert!(d.message.contains(n));
    }
}

#[test]
fn allowlist_is_checked_on_the_host() {
    let text = format!(
        "{HEADER}sandbox:\n  allow_commands: [/bin/echo, make]\nworkflow:\n  steps:\n    - {{name: a, run: {{program: curl}}}}\n    - {{name: b, run: {{program: echo}}}}\n    - {{name: c, shell: echo}}\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].message.contains("`make` is not an absolute path"));
    assert!(e[1]
        .message
        .contains("`curl` is not in `sandbox.allow_commands`"));
    assert!(e[2].message.contains("`/bin/sh` is not in"));
}

#[test]
fn paths_and_names_are_checked() {
    let e = errors(&workflow(
        "sandbox:\n  inputs: [{host: a, guest: rel}]\n  outputs: [{guest: /a/../b, host: o}]\n  env: {1BAD: x}\n  user: alice\n  kernel: /k\nskills: [{image: t, mount: /proc/x}, {image: u}]\n",
    ));
    let msgs: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(e.len(), 7, "{msgs:?}");
    assert!(msgs[0].contains("not absolute"));
    assert!(msgs[1].contains("must not contain `..`"));
    assert!(msgs[2].contains("not a valid environment variable name"));
    assert!(msgs[3].contains("user `alice`"));
    assert!(msgs[4].contains("without `initramfs`"));
    assert!(msgs[5].contains("reserves"));
    assert!(msgs[6].contains("missing required field `mount`"));
}

#[test]
fn kinds_and_sections() {
    let d = one_error(
        "api_version: v1\nkind: sandbox\nname: s\nworkflow: {steps: [{name: a, shell: x}]}\n",
    );
    assert!(d.message.contains("not used with `kind: sandbox`"));
    let spec = parse_str(
        "api_version: v1\nkind: agent\nname: a\nagent: {command: python3, args: [t.py], prompt: hi}\nllm: {provider: openai, model: m, api_key_env: KEY}\n",
        "t",
        Path::new("/"),
    )
    .unwrap();
    let llm_env = spec.llm.unwrap().env();
    assert!(llm_env.contains(&("VOIDBOX_LLM_MODEL".into(), "m".into())));
    let d = one_error("api_version: v1\nkind: agent\nname: a\nagent: {command: x}\nllm: {provider: p, model: m, api_key_env: sk-123}\n");
    assert!(d.message.contains("not an environment variable name"));
}

#[test]
fn duplicate_keys_are_errors() {
    let d = one_error(&workflow("sandbox:\n  vcpus: 1\n  vcpus: 2\n"));
    assert!(d
        .message
        .contains("duplicate field `vcpus` (first set on line 9)"));
}

#[test]
fn json_spec_is_validated_with_positions() {
    let text = "{\n  \"api_version\": \"v1\",\n  \"kind\": \"workflow\",\n  \"name\": \"j\",\n  \"sandbox\": {\"vcpu\": 2},\n  \"workflow\": {\"steps\": [{\"name\": \"a\", \"shell\": \"true\"}]}\n}\n";
    let d = one_error(text);
    assert_eq!(d.pos.line, 5);
    assert_eq!(d.hint.as_deref(), Some("did you mean `vcpus`?"));
    let bad = "{\n  \"api_version\": \"v1\",\n}\n";
    let d = one_error(bad);
    assert_eq!(d.pos.line, 3);
    assert!(d.message.starts_with("invalid JSON"));
}

#[test]
fn syntax_errors_have_positions() {
    let d = one_error("api_version: v1\nkind: [workflow\nname: x\n");
    assert!(d.message.starts_with("invalid YAML"), "{}", d.message);
    assert!(d.pos.line >= 2);
}

#[test]
fn display_names_file_line_column_and_hint() {
    let err = parse_str(
        &workflow("sandbox:\n  memroy_mb: 1\n"),
        "spec.yaml",
        Path::new("/"),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("spec.yaml: 1 error in spec"), "{text}");
    assert!(
        text.contains("spec.yaml:9:3: sandbox.memroy_mb: unknown field `memroy_mb` in `sandbox`"),
        "{text}"
    );
    assert!(text.contains("help: did you mean `memory_mb`?"), "{text}");
}

#[test]
fn missing_file_and_relative_paths() {
    let err = load_file(Path::new("/nonexistent/spec.yaml")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cannot read spec file /nonexistent/spec.yaml"),
        "{text}"
    );
    assert!(text.contains("--file"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.yaml");
    std::fs::write(
        &file,
        workflow("sandbox:\n  inputs: [{host: src, guest: /src}]\n"),
    )
    .unwrap();
    let spec = load_file(&file).unwrap();
    assert_eq!(spec.sandbox.inputs[0].host, dir.path().join("src"));
}

#[test]
fn json_schema_describes_fields_and_defaults() {
    let schema: serde_json::Value = serde_json::from_str(&voidbox_spec::json_schema()).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let sandbox = &schema["definitions"]["Sandbox"]["properties"];
    assert_eq!(sandbox["memory_mb"]["default"], 512);
    assert_eq!(sandbox["max_output_mb"]["default"], 4096);
    assert!(sandbox["network"]["description"]
        .as_str()
        .unwrap()
        .contains("Only `false`"));
    for field in ["api_version", "kind", "name"] {
        assert!(schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == field));
    }
}

#[test]
fn examples_in_repo_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "json") {
            load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
    }
    eprintln!("{count} examples validated");
}
