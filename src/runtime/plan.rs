//! Planning a run on the host: every image resolved to a manifest digest and
//! a disk, the guest kernel and initramfs, limits, files in and out, and the
//! commands to run. `voidbox inspect` prints this.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use voidbox_oci::{ImageSource, PullOptions, PullPolicy, Store};
use voidbox_spec::{Input, Kind, Output, Spec};

use super::error::{Error, Result};
use super::guest::{self, GuestBoot};

/// virtio-blk serial of the base image disk.
pub const ROOT_SERIAL: &str = "voidbox-root";

/// An image resolved to a manifest and a read-only disk.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    /// The reference as written.
    pub reference: String,
    /// Its canonical name.
    pub canonical: String,
    /// The image manifest digest.
    pub manifest: String,
    /// The ext4 disk in the store.
    pub disk: PathBuf,
    /// The virtio-blk serial the guest finds it by.
    pub serial: String,
    /// Environment from the image config (`KEY=value`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_env: Vec<String>,
}

/// A skill disk and where it is mounted.
#[derive(Debug, Clone, Serialize)]
pub struct SkillPlan {
    /// The image.
    pub image: ImagePlan,
    /// Guest mount path.
    pub mount: String,
}

/// One command to run.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    /// Step name (`agent` for kind agent).
    pub name: String,
    /// argv.
    pub argv: Vec<String>,
    /// Environment: sandbox env, then the step's (secrets shown as `<from $NAME>`).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Time limit in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Dependencies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Step whose stdout feeds stdin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin_from: Option<String>,
    /// Host environment variables whose values are added at run time
    /// (`llm.api_key_env`); their values never appear in a plan.
    #[serde(skip)]
    pub host_env: Vec<String>,
}

/// The complete plan of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Spec name.
    pub name: String,
    /// Spec kind.
    pub kind: &'static str,
    /// Kernel and initramfs.
    pub guest: GuestBoot,
    /// Base image (absent: the guest image's busybox root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<ImagePlan>,
    /// Skill disks.
    pub skills: Vec<SkillPlan>,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Whole-run limit in seconds.
    pub timeout_secs: u64,
    /// Cap on one output's size, in MiB (`sandbox.max_output_mb`).
    pub max_output_mb: u64,
    /// `uid:gid` or `root`.
    pub user: String,
    /// Every command's starting environment: the image config's, then the
    /// sandbox's (steps add their own on top).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Command allowlist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_commands: Option<Vec<String>>,
    /// Inputs.
    pub inputs: Vec<Input>,
    /// Outputs.
    pub outputs: Vec<Output>,
    /// Commands.
    pub steps: Vec<StepPlan>,
}

/// What planning needs besides the spec.
pub struct PlanContext<'a> {
    /// The image store.
    pub store: &'a Store,
    /// `$VOIDBOX_HOME`.
    pub home: &'a Path,
    /// How to pull missing images.
    pub pull: PullOptions,
}

fn resolve_image(
    ctx: &PlanContext<'_>,
    reference: &str,
    field: &str,
    serial: String,
) -> Result<ImagePlan> {
    let source =
        ImageSource::parse(reference).map_err(|e| Error::Image(format!("{field}: {e}")))?;
    let mut options = ctx.pull.clone();
    if options.policy == PullPolicy::Always {
        options.policy = PullPolicy::IfMissing;
    }
    let image = voidbox_oci::pull_blocking(ctx.store, &source, &options).map_err(|e| {
        let hint = if options.policy == PullPolicy::Never {
            format!("pull it first with `voidbox image pull {reference}` (--offline never contacts a registry)")
        } else {
            "check the name and that its registry is reachable, or build/import it (`voidbox image pull oci:DIR` / `docker-archive:FILE`)".to_string()
        };
        Error::Image(format!("{field}: cannot get image `{reference}`: {e}\n  help: {hint}"))
    })?;
    let image_env = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    Ok(ImagePlan {
        reference: reference.to_string(),
        canonical: image.reference,
        manifest: image.manifest.to_string(),
        disk: image.disk,
        serial,
        image_env,
    })
}

fn check_inputs(inputs: &[Input]) -> Result<()> {
    for (i, input) in inputs.iter().enumerate() {
        if let Err(e) = std::fs::metadata(&input.host) {
            return Err(Error::Host(format!(
                "sandbox.inputs[{i}].host {} cannot be read ({e}); fix the path (relative paths start at the spec file's directory)",
                input.host.display()
            )));
        }
    }
    Ok(())
}

/// Env of the base image config, then the sandbox's, then the step's.
fn merged_env(
    image_env: &[String],
    sandbox: &BTreeMap<String, String>,
    step: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = image_env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(sandbox.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(step.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The commands of a spec.
pub fn steps_of(spec: &Spec, image_env: &[String]) -> Vec<StepPlan> {
    let sandbox_env = &spec.sandbox.env;
    match spec.kind {
        Kind::Workflow => spec
            .workflow
            .iter()
            .flat_map(|w| &w.steps)
            .map(|s| StepPlan {
                name: s.name.clone(),
                argv: s.argv(),
                env: merged_env(image_env, sandbox_env, &s.env),
                cwd: s.cwd.clone(),
                timeout_secs: s.timeout_secs,
                depends_on: s.depends_on.clone(),
                stdin_from: s.stdin_from.clone(),
                host_env: Vec::new(),
            })
            .collect(),
        Kind::Agent => {
            let Some(agent) = &spec.agent else {
                return Vec::new();
            };
            let mut env = merged_env(image_env, sandbox_env, &agent.env);
            if let Some(prompt) = &agent.prompt {
                env.insert("VOIDBOX_AGENT_PROMPT".into(), prompt.clone());
            }
            let mut host_env = Vec::new();
            if let Some(llm) = &spec.llm {
                env.extend(llm.env());
                if let Some(key) = &llm.api_key_env {
                    env.insert(key.clone(), format!("<from ${key}>"));
                    host_env.push(key.clone());
                }
            }
            vec![StepPlan {
                name: "agent".into(),
                argv: std::iter::once(agent.command.clone())
                    .chain(agent.args.iter().cloned())
                    .collect(),
                env,
                cwd: None,
                timeout_secs: None,
                depends_on: Vec::new(),
                stdin_from: None,
                host_env,
            }]
        }
        Kind::Sandbox => Vec::new(),
    }
}

impl Plan {
    /// Resolves everything a run needs (pulling missing images).
    pub fn build(spec: &Spec, ctx: &PlanContext<'_>) -> Result<Plan> {
        let sandbox = &spec.sandbox;
        let guest = guest::resolve(ctx.store, ctx.home, sandbox, &ctx.pull)?;
        let rootfs = sandbox
            .image
            .as_deref()
            .map(|r| resolve_image(ctx, r, "sandbox.image", ROOT_SERIAL.to_string()))
            .transpose()?;
        let skills = spec
            .skills
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(SkillPlan {
                    image: resolve_image(
                        ctx,
                        &s.image,
                        &format!("skills[{i}].image"),
                        format!("voidbox-skill{i}"),
                    )?,
                    mount: s.mount.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        check_inputs(&sandbox.inputs)?;
        let image_env = rootfs
            .as_ref()
            .map(|r| r.image_env.clone())
            .unwrap_or_default();
        Ok(Plan {
            name: spec.name.clone(),
            kind: spec.kind.as_str(),
            guest,
            rootfs,
            skills,
            memory_mb: sandbox.memory_mb,
            vcpus: sandbox.vcpus,
            timeout_secs: sandbox.timeout_secs,
            max_output_mb: sandbox.max_output_mb,
            user: sandbox.user.clone(),
            env: merged_env(&image_env, &sandbox.env, &BTreeMap::new()),
            allow_commands: sandbox.allow_commands.clone(),
            inputs: sandbox.inputs.clone(),
            outputs: sandbox.outputs.clone(),
            steps: steps_of(spec, &image_env),
        })
    }

    /// `uid`/`gid` of the plan's user.
    pub fn user_ids(&self) -> (u32, u32) {
        if self.user == "root" {
            return (0, 0);
        }
        let (uid, gid) = match self.user.split_once(':') {
            Some((u, g)) => (u.parse().unwrap_or(65534), g.parse().unwrap_or(65534)),
            None => {
                let u = self.user.parse().unwrap_or(65534);
                (u, u)
            }
        };
        (uid, gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        voidbox_spec::parse_str(text, "t", Path::new("/")).unwrap()
    }

    #[test]
    fn agent_env_carries_llm_settings_but_never_the_key() {
        let s = spec("api_version: v1\nkind: agent\nname: a\nsandbox: {env: {A: '1'}}\nagent: {command: python3, args: [tool.py], prompt: do it, env: {B: '2'}}\nllm: {provider: openai, model: m, base_url: 'http://x', api_key_env: MY_KEY}\n");
        let steps = steps_of(&s, &["PATH=/usr/bin".into(), "A=0".into()]);
        assert_eq!(steps.len(), 1);
        let st = &steps[0];
        assert_eq!(st.argv, ["python3", "tool.py"]);
        assert_eq!(st.env["A"], "1");
        assert_eq!(st.env["B"], "2");
        assert_eq!(st.env["PATH"], "/usr/bin");
        assert_eq!(st.env["VOIDBOX_AGENT_PROMPT"], "do it");
        assert_eq!(st.env["VOIDBOX_LLM_BASE_URL"], "http://x");
        assert_eq!(st.env["MY_KEY"], "<from $MY_KEY>");
        assert_eq!(st.host_env, ["MY_KEY"]);
    }

    #[test]
    fn workflow_steps_merge_env_in_order() {
        let s = spec("api_version: v1\nkind: workflow\nname: w\nsandbox: {env: {X: s, Y: s}}\nworkflow: {steps: [{name: a, shell: 'echo $X', env: {Y: step}}]}\n");
        let steps = steps_of(&s, &["X=img".into()]);
        assert_eq!(steps[0].env["X"], "s");
        assert_eq!(steps[0].env["Y"], "step");
        assert_eq!(steps[0].argv, ["/bin/sh", "-c", "echo $X"]);
    }

    #[test]
    fn missing_input_is_named() {
        let err = check_inputs(&[Input {
            host: "/nonexistent/src".into(),
            guest: "/src".into(),
        }])
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("sandbox.inputs[0].host /nonexistent/src"));
    }
}
