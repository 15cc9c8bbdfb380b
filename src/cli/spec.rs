//! `voidbox validate` and `voidbox inspect`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::image::ResolveArgs;
use super::run::{open_context, LaunchArgs};
use crate::runtime::PullPolicy;

/// A spec file.
#[derive(Debug, Args)]
pub struct FileArg {
    /// The spec file (YAML or JSON).
    #[arg(short, long, value_name = "SPEC")]
    pub file: PathBuf,
}

/// `voidbox inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub resolve: ResolveArgs,
}

/// Validates a spec: exit 0, or 121 with every problem listed.
pub fn validate(args: FileArg) -> Result<u8> {
    let spec = voidbox_spec::load_file(&args.file)?;
    let steps = spec.workflow.as_ref().map_or(0, |w| w.steps.len());
    println!(
        "{}: ok ({} `{}`, {steps} step{})",
        args.file.display(),
        spec.kind.as_str(),
        spec.name,
        if steps == 1 { "" } else { "s" }
    );
    Ok(0)
}

/// Prints the resolved plan.
pub fn inspect(args: InspectArgs) -> Result<u8> {
    let spec = voidbox_spec::load_file(&args.file.file)?;
    let ctx = open_context(&args.resolve, PullPolicy::IfMissing, &LaunchArgs::default())?;
    let plan = ctx.plan(&spec)?;
    let launch = crate::runtime::launch::choose_launch(&ctx.launch);
    if args.json {
        let mut value = serde_json::to_value(&plan)?;
        value["launcher"] = match &launch {
            Ok(mode) => {
                serde_json::json!({"mode": mode.name(), "reason": match mode { crate::runtime::launch::LaunchMode::NestedLane(r) => r.clone(), _ => String::new() }})
            }
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    println!("name:       {} ({})", plan.name, plan.kind);
    println!("kernel:     {}", plan.guest.kernel.display());
    println!("initramfs:  {}", plan.guest.initramfs.display());
    println!("  from:     {}", plan.guest.source);
    match &plan.rootfs {
        Some(r) => {
            println!("image:      {} -> {}", r.reference, r.manifest);
            println!(
                "  disk:     {} (serial {}, read-only)",
                r.disk.display(),
                r.serial
            );
        }
        None => println!("image:      none (the guest image's busybox root)"),
    }
    for s in &plan.skills {
        println!(
            "skill:      {} -> {} at {}",
            s.image.reference, s.image.manifest, s.mount
        );
        println!(
            "  disk:     {} (serial {}, read-only)",
            s.image.disk.display(),
            s.image.serial
        );
    }
    println!(
        "limits:     {} MiB, {} vCPU, {} s, user {}, network off",
        plan.memory_mb, plan.vcpus, plan.timeout_secs, plan.user
    );
    if let Some(allow) = &plan.allow_commands {
        println!("allowed:    {}", allow.join(", "));
    }
    for i in &plan.inputs {
        println!("input:      {} -> {}", i.host.display(), i.guest);
    }
    for o in &plan.outputs {
        println!("output:     {} -> {}", o.guest, o.host.display());
    }
    for s in &plan.steps {
        let deps = if s.depends_on.is_empty() {
            String::new()
        } else {
            format!(" (after {})", s.depends_on.join(", "))
        };
        println!("step:       {}: {:?}{deps}", s.name, s.argv);
    }
    match launch {
        Ok(mode) => println!("launcher:   {}", mode.name()),
        Err(e) => println!("launcher:   unavailable: {e}"),
    }
    Ok(0)
}
