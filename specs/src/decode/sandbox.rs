//! The `sandbox` section and `skills`.

use std::path::{Path, PathBuf};

use super::{join, Ctx};
use crate::model::{
    Input, Output, Sandbox, Skill, MAX_OUTPUT_MB_RANGE, MAX_TIMEOUT_SECS, MEMORY_MB_RANGE,
    VCPUS_RANGE,
};
use crate::node::Node;

pub(super) const SANDBOX_FIELDS: &[&str] = &[
    "image",
    "guest_image",
    "kernel",
    "initramfs",
    "memory_mb",
    "vcpus",
    "env",
    "inputs",
    "outputs",
    "allow_commands",
    "user",
    "timeout_secs",
    "max_output_mb",
    "network",
];

/// Guest directories a skill may not be mounted over.
const RESERVED_MOUNTS: &[&str] = &["/proc", "/sys", "/dev", "/.voidbox", "/run"];

fn no_misplaced(_: &str) -> Option<String> {
    None
}

pub(super) fn decode_sandbox(ctx: &mut Ctx, node: &Node, base_dir: &Path) -> Option<Sandbox> {
    let fields = ctx.fields(node, "sandbox", SANDBOX_FIELDS, &|name| {
        (name == "steps").then(|| "`steps` belongs under `workflow:`".to_string())
    })?;
    let mut sandbox = Sandbox::default();

    if let Some(n) = fields.get("image") {
        sandbox.image = image_ref(ctx, n, "sandbox.image", base_dir);
    }
    if let Some(n) = fields.get("guest_image") {
        sandbox.guest_image = image_ref(ctx, n, "sandbox.guest_image", base_dir);
    }
    let kernel = fields.get("kernel");
    let initramfs = fields.get("initramfs");
    if let Some(n) = kernel {
        sandbox.kernel = host_path(ctx, n, "sandbox.kernel", base_dir);
    }
    if let Some(n) = initramfs {
        sandbox.initramfs = host_path(ctx, n, "sandbox.initramfs", base_dir);
    }
    match (kernel, initramfs) {
        (Some(n), None) => ctx.error_hint(
            n.pos,
            "sandbox.kernel",
            "`kernel` is set without `initramfs`",
            "set both: the initramfs carries the agent and the kernel's modules",
        ),
        (None, Some(n)) => ctx.error_hint(
            n.pos,
            "sandbox.initramfs",
            "`initramfs` is set without `kernel`",
            "set both: the initramfs must match the kernel",
        ),
        _ => {}
    }
    if let Some(n) = fields.get("memory_mb") {
        let (min, max) = MEMORY_MB_RANGE;
        if let Some(v) = ctx.uint(n, "sandbox.memory_mb", min, max) {
            sandbox.memory_mb = v as u32;
        }
    }
    if let Some(n) = fields.get("vcpus") {
        let (min, max) = VCPUS_RANGE;
        if let Some(v) = ctx.uint(n, "sandbox.vcpus", min, max) {
            sandbox.vcpus = v as u32;
        }
    }
    if let Some(n) = fields.get("env") {
        sandbox.env = ctx.env(n, "sandbox.env");
    }
    if let Some(n) = fields.get("inputs") {
        sandbox.inputs = decode_inputs(ctx, n, base_dir);
    }
    if let Some(n) = fields.get("outputs") {
        sandbox.outputs = decode_outputs(ctx, n, base_dir);
    }
    if let Some(n) = fields.get("allow_commands") {
        sandbox.allow_commands = decode_allow_commands(ctx, n);
    }
    if let Some(n) = fields.get("user") {
        if let Some(user) = decode_user(ctx, n) {
            sandbox.user = user;
        }
    }
    if let Some(n) = fields.get("timeout_secs") {
        if let Some(v) = ctx.uint(n, "sandbox.timeout_secs", 1, MAX_TIMEOUT_SECS) {
            sandbox.timeout_secs = v;
        }
    }
    if let Some(n) = fields.get("max_output_mb") {
        let (min, max) = MAX_OUTPUT_MB_RANGE;
        if let Some(v) = ctx.uint(n, "sandbox.max_output_mb", min, max) {
            sandbox.max_output_mb = v;
        }
    }
    if let Some(n) = fields.get("network") {
        if let Some(network) = ctx.boolean(n, "sandbox.network") {
            if network {
                ctx.error_hint(
                    n.pos,
                    "sandbox.network",
                    "`network: true` is not supported yet: voidbox guests have no network device",
                    "remove the field or set `network: false`; pass files with `inputs` instead",
                );
            }
        }
    }
    // Returned even with errors (the caller refuses the spec then) so that
    // later sections can still be checked against it.
    Some(sandbox)
}

/// An image reference: non-empty, no whitespace. Its syntax is checked by
/// the OCI layer when it is resolved.
/// A relative `oci:DIR` or `docker-archive:FILE` is made absolute against
/// the spec's directory.
fn image_ref(ctx: &mut Ctx, node: &Node, path: &str, base_dir: &Path) -> Option<String> {
    let r = ctx.nonempty_string(node, path)?;
    if r.chars().any(char::is_whitespace) {
        ctx.error(
            node.pos,
            path,
            format!("image reference `{r}` contains whitespace"),
        );
        return None;
    }
    for prefix in ["oci:", "docker-archive:"] {
        if let Some(rest) = r.strip_prefix(prefix) {
            if !rest.is_empty() && !rest.starts_with('/') {
                let path = normalize(&base_dir.join(rest));
                return Some(format!("{prefix}{}", path.display()));
            }
        }
    }
    Some(r)
}

/// A host path, made absolute against the spec file's directory.
fn host_path(ctx: &mut Ctx, node: &Node, path: &str, base_dir: &Path) -> Option<PathBuf> {
    let p = ctx.nonempty_string(node, path)?;
    if p.contains('\0') {
        ctx.error(node.pos, path, "path contains a NUL byte");
        return None;
    }
    Some(normalize(&base_dir.join(p)))
}

/// Removes `.` and `..` components lexically, so one file has one name
/// (image store records are keyed by it).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn decode_inputs(ctx: &mut Ctx, node: &Node, base_dir: &Path) -> Vec<Input> {
    let Some(items) = ctx.list(node, "sandbox.inputs") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("sandbox.inputs[{i}]");
        let Some(f) = ctx.fields(item, &path, &["host", "guest"], &no_misplaced) else {
            continue;
        };
        let host = ctx
            .required(&f, "host", &path, "./src")
            .and_then(|n| host_path(ctx, n, &join(&path, "host"), base_dir));
        let guest = ctx
            .required(&f, "guest", &path, "/work/src")
            .and_then(|n| ctx.guest_path(n, &join(&path, "guest")));
        if let (Some(host), Some(guest)) = (host, guest) {
            if guest == "/" {
                ctx.error(f.pos, &path, "an input cannot replace the guest's root `/`");
                continue;
            }
            out.push(Input { host, guest });
        }
    }
    out
}

fn decode_outputs(ctx: &mut Ctx, node: &Node, base_dir: &Path) -> Vec<Output> {
    let Some(items) = ctx.list(node, "sandbox.outputs") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("sandbox.outputs[{i}]");
        let Some(f) = ctx.fields(item, &path, &["guest", "host"], &no_misplaced) else {
            continue;
        };
        let guest = ctx
            .required(&f, "guest", &path, "/work/out")
            .and_then(|n| ctx.guest_path(n, &join(&path, "guest")));
        let host = ctx
            .required(&f, "host", &path, "./out")
            .and_then(|n| host_path(ctx, n, &join(&path, "host"), base_dir));
        if let (Some(guest), Some(host)) = (guest, host) {
            out.push(Output { guest, host });
        }
    }
    out
}

fn decode_allow_commands(ctx: &mut Ctx, node: &Node) -> Option<Vec<String>> {
    let list = ctx.list(node, "sandbox.allow_commands")?;
    if list.is_empty() {
        ctx.error_hint(
            node.pos,
            "sandbox.allow_commands",
            "`allow_commands` is empty, so no command could run",
            "list the programs' absolute paths, or remove the field to allow every program",
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("sandbox.allow_commands[{i}]");
        let Some(cmd) = ctx.nonempty_string(item, &path) else {
            continue;
        };
        if !cmd.starts_with('/') {
            ctx.error_hint(
                item.pos,
                &path,
                format!("`{cmd}` is not an absolute path"),
                format!("commands are matched by absolute guest path, e.g. `/usr/bin/{cmd}`"),
            );
            continue;
        }
        out.push(cmd);
    }
    Some(out)
}

/// `root`, `uid` or `uid:gid` (numbers below 2^32 - 1).
fn decode_user(ctx: &mut Ctx, node: &Node) -> Option<String> {
    let user = ctx.text(node, "sandbox.user")?;
    let is_id = |s: &str| s.parse::<u32>().is_ok_and(|v| v < u32::MAX);
    let ok = user == "root"
        || match user.split_once(':') {
            Some((uid, gid)) => is_id(uid) && is_id(gid),
            None => is_id(&user),
        };
    if !ok {
        ctx.error_hint(
            node.pos,
            "sandbox.user",
            format!("user `{user}` is not `root`, `uid` or `uid:gid`"),
            "use numbers, e.g. `1000:1000` (names are not looked up in the image)",
        );
        return None;
    }
    Some(user)
}

pub(super) fn decode_skills(ctx: &mut Ctx, node: &Node, base_dir: &Path) -> Vec<Skill> {
    let Some(items) = ctx.list(node, "skills") else {
        return Vec::new();
    };
    let mut skills: Vec<Skill> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("skills[{i}]");
        let Some(f) = ctx.fields(item, &path, &["image", "mount"], &no_misplaced) else {
            continue;
        };
        let image = ctx
            .required(&f, "image", &path, "tools:latest")
            .and_then(|n| image_ref(ctx, n, &join(&path, "image"), base_dir));
        let mount_node = ctx.required(&f, "mount", &path, "/skills/tools");
        let mount = mount_node.and_then(|n| ctx.guest_path(n, &join(&path, "mount")));
        let (Some(image), Some(mount), Some(mount_node)) = (image, mount, mount_node) else {
            continue;
        };
        let mpath = join(&path, "mount");
        let trimmed = mount.trim_end_matches('/');
        if trimmed.is_empty() {
            ctx.error(mount_node.pos, &mpath, "a skill cannot be mounted over `/`");
            continue;
        }
        if let Some(r) = RESERVED_MOUNTS
            .iter()
            .find(|r| trimmed == **r || trimmed.starts_with(&format!("{r}/")))
        {
            ctx.error_hint(
                mount_node.pos,
                &mpath,
                format!("`{mount}` is under `{r}`, which the guest reserves"),
                "mount skills under a directory of their own, e.g. `/skills/NAME`",
            );
            continue;
        }
        if skills
            .iter()
            .any(|s| s.mount.trim_end_matches('/') == trimmed)
        {
            ctx.error(
                mount_node.pos,
                &mpath,
                format!("two skills are mounted at `{mount}`"),
            );
            continue;
        }
        skills.push(Skill {
            image,
            mount: trimmed.to_string(),
        });
    }
    skills
}
