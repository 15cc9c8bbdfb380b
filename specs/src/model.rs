//! The spec's typed model. Doc comments here become the JSON Schema's
//! descriptions (`voidbox schema`), and every default is stated in them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default limit on a whole run, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Default user the workload runs as (`uid:gid`).
pub const DEFAULT_USER: &str = "65534:65534";
/// Smallest and largest memory sizes accepted, in MiB.
pub const MEMORY_MB_RANGE: (u64, u64) = (64, 262_144);
/// Smallest and largest vCPU counts accepted.
pub const VCPUS_RANGE: (u64, u64) = (1, 32);
/// Largest timeout accepted, in seconds (one week).
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Default cap on one output's size, in MiB (4 GiB).
pub const DEFAULT_MAX_OUTPUT_MB: u64 = 4096;
/// Smallest and largest output caps accepted, in MiB (1 MiB to 1 TiB).
pub const MAX_OUTPUT_MB_RANGE: (u64, u64) = (1, 1 << 20);

/// A voidbox spec file (YAML or JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Spec format version. Must be `v1`.
    pub api_version: ApiVersion,
    /// What the file describes: `workflow` (steps), `agent` (an agent
    /// command) or `sandbox` (only a sandbox, for `voidbox shell`/`exec`).
    pub kind: Kind,
    /// A name for the run: letters, digits, `-`, `_`, `.`; up to 63 characters.
    pub name: String,
    /// The microVM: images, limits, files in and out. Every field has a default.
    #[serde(default)]
    pub sandbox: Sandbox,
    /// Read-only tool images mounted into the guest. Default: none.
    #[serde(default)]
    pub skills: Vec<Skill>,
    /// The steps of a `workflow`. Required for `kind: workflow`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Workflow>,
    /// The agent command of `kind: agent`. Required there, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,
    /// The LLM the agent talks to, passed to the agent command as environment
    /// variables. Only with `kind: agent`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<Llm>,
}

/// The spec format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// The first and only version.
    #[serde(rename = "v1")]
    V1,
}

/// What a spec describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A list of steps (`workflow.steps`).
    Workflow,
    /// A sandbox only: `voidbox shell --file` / `voidbox exec --file` use it.
    Sandbox,
    /// An agent command (`agent`) with its LLM settings (`llm`).
    Agent,
}

impl Kind {
    /// The spelling used in spec files.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workflow => "workflow",
            Kind::Sandbox => "sandbox",
            Kind::Agent => "agent",
        }
    }
}

/// The microVM and what goes in and out of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// OCI image whose filesystem becomes the guest's root (read-only lower
    /// layer, writable tmpfs on top): `name[:tag|@digest]`, `oci:<dir>[:tag]`
    /// or `docker-archive:<file>`. Default: none, the guest runs in the guest
    /// image's own busybox root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// OCI image holding the guest kernel and initramfs. Default: the
    /// default guest image made by `voidbox guest build`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_image: Option<String>,
    /// Path of a guest kernel on the host (relative to the spec file).
    /// Set together with `initramfs`. Default: from `guest_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Path of the matching initramfs (with the voidbox agent as /init).
    /// Set together with `kernel`. Default: from `guest_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Guest memory in MiB, 64 to 262144. Default: 512.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Number of vCPUs, 1 to 32. Default: 1.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Environment variables for every command. Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host files or directories copied into the guest before the first
    /// step. Default: none.
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// Guest files or directories copied to the host after the last step
    /// (also after a failed step). Default: none.
    #[serde(default)]
    pub outputs: Vec<Output>,
    /// If set, only these programs (absolute guest paths) may be run;
    /// argv[0] is looked up on PATH and compared without following its last
    /// symlink. Allowing a shell allows whatever the shell runs. Default:
    /// unset, every program may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_commands: Option<Vec<String>>,
    /// The user commands run as: `uid[:gid]` (numbers) or `root`.
    /// Default: `65534:65534` (nobody).
    #[serde(default = "default_user")]
    pub user: String,
    /// Limit on the whole run in seconds, from launch to shutdown, 1 to
    /// 604800. Default: 600.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Largest size of one output in MiB, 1 to 1048576: what the guest sends
    /// for it (a file, or a directory's tar stream) is staged on the host's
    /// disk, and the copy fails once it passes this size, so a guest cannot
    /// fill the host's memory or disk. Default: 4096.
    #[serde(default = "default_max_output_mb")]
    pub max_output_mb: u64,
    /// Network access. Only `false` is accepted for now. Default: false.
    #[serde(default)]
    pub network: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            image: None,
            guest_image: None,
            kernel: None,
            initramfs: None,
            memory_mb: DEFAULT_MEMORY_MB,
            vcpus: DEFAULT_VCPUS,
            env: BTreeMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            allow_commands: None,
            user: DEFAULT_USER.to_string(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            max_output_mb: DEFAULT_MAX_OUTPUT_MB,
            network: false,
        }
    }
}

fn default_memory_mb() -> u32 {
    DEFAULT_MEMORY_MB
}
fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}
fn default_user() -> String {
    DEFAULT_USER.to_string()
}
fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}
fn default_max_output_mb() -> u64 {
    DEFAULT_MAX_OUTPUT_MB
}

/// A host path copied into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Host file or directory (relative to the spec file). Required.
    pub host: PathBuf,
    /// Absolute guest path it is copied to. Required.
    pub guest: String,
}

/// A guest path copied out to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Absolute guest file or directory. Required.
    pub guest: String,
    /// Host directory it is copied into (relative to the spec file; created
    /// if missing). Nothing is ever written outside it. Required.
    pub host: PathBuf,
}

/// A read-only tool image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Skill {
    /// OCI image reference. Required.
    pub image: String,
    /// Absolute guest directory where it is mounted read-only, nosuid,
    /// nodev. Required.
    pub mount: String,
}

/// The steps of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// One or more steps. A step starts when all its `depends_on` steps have
    /// succeeded; steps without dependencies run in file order. Required.
    pub steps: Vec<Step>,
}

/// One command of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique step name: letters, digits, `-`, `_`, `.`. Required.
    pub name: String,
    /// A program and its arguments, run without a shell. Exactly one of
    /// `run` and `shell` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// A script run by `/bin/sh -c`. Exactly one of `run` and `shell` is
    /// required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Environment variables for this step, over `sandbox.env`. Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute guest working directory. Default: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Limit on this step in seconds, 1 to 604800; the step's processes are
    /// all killed when it passes. Default: none (the run's `timeout_secs`
    /// still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Steps that must succeed before this one starts. Default: none.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// A step (listed in `depends_on`) whose stdout becomes this step's
    /// stdin. Default: none, stdin is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_from: Option<String>,
}

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Program name (looked up on PATH) or absolute guest path. Required.
    pub program: String,
    /// Arguments. Default: none.
    #[serde(default)]
    pub args: Vec<String>,
}

/// What a step runs, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// A program with arguments.
    Program(&'a Run),
    /// A `/bin/sh -c` script.
    Shell(&'a str),
}

impl Step {
    /// The step's command. Validation guarantees exactly one of `run` and
    /// `shell` is set.
    pub fn command(&self) -> Command<'_> {
        match (&self.run, &self.shell) {
            (Some(run), _) => Command::Program(run),
            (None, Some(script)) => Command::Shell(script),
            (None, None) => unreachable!("validated: a step has run or shell"),
        }
    }

    /// argv for the guest: the program and arguments, or `/bin/sh -c script`.
    pub fn argv(&self) -> Vec<String> {
        match self.command() {
            Command::Program(run) => std::iter::once(run.program.clone())
                .chain(run.args.iter().cloned())
                .collect(),
            Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.to_string()],
        }
    }
}

/// The agent command of `kind: agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Program name or absolute guest path. Required.
    pub command: String,
    /// Arguments. Default: none.
    #[serde(default)]
    pub args: Vec<String>,
    /// The task for the agent, passed as `VOIDBOX_AGENT_PROMPT`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Environment variables for the agent command. Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The LLM an agent uses; passed as `VOIDBOX_LLM_*` environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// Provider name, e.g. `openai`, `anthropic`, `ollama`
    /// (`VOIDBOX_LLM_PROVIDER`). Required.
    pub provider: String,
    /// Model name (`VOIDBOX_LLM_MODEL`). Required.
    pub model: String,
    /// API base URL (`VOIDBOX_LLM_BASE_URL`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Name of a host environment variable holding the API key; its value
    /// is passed to the agent under the same name. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

impl Llm {
    /// The `VOIDBOX_LLM_*` variables (without the API key, which the
    /// runtime reads from the host environment).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("VOIDBOX_LLM_PROVIDER".to_string(), self.provider.clone()),
            ("VOIDBOX_LLM_MODEL".to_string(), self.model.clone()),
        ];
        if let Some(url) = &self.base_url {
            env.push(("VOIDBOX_LLM_BASE_URL".to_string(), url.clone()));
        }
        if let Some(name) = &self.api_key_env {
            env.push(("VOIDBOX_LLM_API_KEY_ENV".to_string(), name.clone()));
        }
        env
    }
}
