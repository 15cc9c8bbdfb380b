//! `workflow.steps` (with the dependency graph), `agent` and `llm`, and the
//! host-side allowlist check that fails fast before a VM starts.

use std::collections::HashMap;

use super::{did_you_mean, is_env_name, is_simple_name, join, Ctx};
use crate::model::{Agent, Llm, Run, Step, Workflow, MAX_TIMEOUT_SECS};
use crate::node::{Node, Pos};

const STEP_FIELDS: &[&str] = &[
    "name",
    "run",
    "shell",
    "env",
    "cwd",
    "timeout_secs",
    "depends_on",
    "stdin_from",
];

/// Where a step's references were written, for graph errors.
struct StepRefs {
    pos: Pos,
    depends_on: Vec<Pos>,
    stdin_from: Option<Pos>,
}

/// Whether `program` (a name looked up on PATH, or an absolute path) is
/// allowed by `allow`. Names match entries by their last component: the
/// guest does the exact PATH lookup, this check only fails fast.
pub fn is_allowed(program: &str, allow: &[String]) -> bool {
    if program.starts_with('/') {
        allow.iter().any(|a| a == program)
    } else {
        allow.iter().any(|a| a.rsplit('/').next() == Some(program))
    }
}

fn check_program(ctx: &mut Ctx, program: &str, pos: Pos, path: &str, allow: Option<&[String]>) {
    let Some(allow) = allow else {
        return;
    };
    if !is_allowed(program, allow) {
        let example = if program.starts_with('/') {
            program.to_string()
        } else {
            format!("/usr/bin/{program}")
        };
        ctx.error_hint(
            pos,
            path,
            format!("`{program}` is not in `sandbox.allow_commands`"),
            format!("add its absolute guest path (e.g. `{example}`) to `sandbox.allow_commands`"),
        );
    }
}

fn no_misplaced(_: &str) -> Option<String> {
    None
}

pub(super) fn decode_workflow(
    ctx: &mut Ctx,
    node: &Node,
    allow: Option<&[String]>,
) -> Option<Workflow> {
    let errors_before = ctx.errors.len();
    let f = ctx.fields(node, "workflow", &["steps"], &|name| {
        STEP_FIELDS
            .contains(&name)
            .then(|| format!("`{name}` belongs to a step, under `workflow.steps:`"))
    })?;
    let steps_node = ctx.required(&f, "steps", "workflow", "[{name: build, shell: make}]")?;
    let items = ctx.list(steps_node, "workflow.steps")?;
    if items.is_empty() {
        ctx.error_hint(
            steps_node.pos,
            "workflow.steps",
            "a workflow needs at least one step",
            "add `- {name: hello, run: {program: echo, args: [hi]}}`",
        );
        return None;
    }
    let mut steps = Vec::new();
    let mut refs = Vec::new();
    let mut seen: HashMap<String, Pos> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("workflow.steps[{i}]");
        if let Some((step, step_refs)) = decode_step(ctx, item, &path, allow) {
            if let Some(first) = seen.get(&step.name) {
                let message = format!(
                    "duplicate step name `{}` (first used on line {})",
                    step.name, first.line
                );
                ctx.error(step_refs.pos, &join(&path, "name"), message);
                continue;
            }
            seen.insert(step.name.clone(), step_refs.pos);
            steps.push(step);
            refs.push(step_refs);
        }
    }
    check_graph(ctx, &steps, &refs);
    (ctx.errors.len() == errors_before).then_some(Workflow { steps })
}

fn decode_step(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    allow: Option<&[String]>,
) -> Option<(Step, StepRefs)> {
    let errors_before = ctx.errors.len();
    let f = ctx.fields(node, path, STEP_FIELDS, &|name| {
        ["program", "args"]
            .contains(&name)
            .then(|| format!("`{name}` belongs under the step's `run:`"))
    })?;
    let name_node = ctx.required(&f, "name", path, "build");
    let name = name_node.and_then(|n| {
        let name = ctx.nonempty_string(n, &join(path, "name"))?;
        if !is_simple_name(&name) {
            ctx.error(
                n.pos,
                &join(path, "name"),
                format!("step name `{name}` may only have letters, digits, `-`, `_`, `.`"),
            );
            return None;
        }
        Some(name)
    });

    let run = f
        .get("run")
        .and_then(|n| decode_run(ctx, n, &join(path, "run"), allow));
    let shell = f.get("shell").and_then(|n| {
        let script = ctx.nonempty_string(n, &join(path, "shell"))?;
        check_program(ctx, "/bin/sh", n.pos, &join(path, "shell"), allow);
        Some(script)
    });
    match (f.get("run"), f.get("shell")) {
        (None, None) => ctx.error_hint(
            f.pos,
            path,
            "a step needs `run` or `shell`",
            "add `run: {program: make, args: [all]}` or `shell: make all`",
        ),
        (Some(_), Some(n)) => ctx.error_hint(
            n.pos,
            &join(path, "shell"),
            "a step has `run` or `shell`, not both",
            "keep one of them",
        ),
        _ => {}
    }
    let env = f
        .get("env")
        .map(|n| ctx.env(n, &join(path, "env")))
        .unwrap_or_default();
    let cwd = f
        .get("cwd")
        .and_then(|n| ctx.guest_path(n, &join(path, "cwd")));
    let timeout_secs = f
        .get("timeout_secs")
        .and_then(|n| ctx.uint(n, &join(path, "timeout_secs"), 1, MAX_TIMEOUT_SECS));

    let mut depends_on = Vec::new();
    let mut depends_pos = Vec::new();
    if let Some(n) = f.get("depends_on") {
        if let Some(items) = ctx.list(n, &join(path, "depends_on")) {
            for (i, item) in items.iter().enumerate() {
                if let Some(dep) = ctx.nonempty_string(item, &format!("{path}.depends_on[{i}]")) {
                    depends_on.push(dep);
                    depends_pos.push(item.pos);
                }
            }
        }
    }
    let stdin_node = f.get("stdin_from");
    let stdin_from = stdin_node.and_then(|n| ctx.nonempty_string(n, &join(path, "stdin_from")));

    if ctx.errors.len() != errors_before {
        return None;
    }
    let refs = StepRefs {
        pos: name_node.map_or(f.pos, |n| n.pos),
        depends_on: depends_pos,
        stdin_from: stdin_node.map(|n| n.pos),
    };
    Some((
        Step {
            name: name?,
            run,
            shell,
            env,
            cwd,
            timeout_secs,
            depends_on,
            stdin_from,
        },
        refs,
    ))
}

fn decode_run(ctx: &mut Ctx, node: &Node, path: &str, allow: Option<&[String]>) -> Option<Run> {
    let f = ctx.fields(node, path, &["program", "args"], &no_misplaced)?;
    let program_node = ctx.required(&f, "program", path, "make")?;
    let program = ctx.nonempty_string(program_node, &join(path, "program"))?;
    check_program(
        ctx,
        &program,
        program_node.pos,
        &join(path, "program"),
        allow,
    );
    let args = f
        .get("args")
        .map(|n| ctx.text_list(n, &join(path, "args")))
        .unwrap_or_default();
    Some(Run { program, args })
}

/// Every `depends_on` and `stdin_from` names an earlier-or-later step, no
/// step depends on itself, and there is no cycle.
fn check_graph(ctx: &mut Ctx, steps: &[Step], refs: &[StepRefs]) {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut graph_ok = true;
    for (i, (step, r)) in steps.iter().zip(refs).enumerate() {
        let path = format!("workflow.steps[{i}]");
        for (dep, pos) in step.depends_on.iter().zip(&r.depends_on) {
            if dep == &step.name {
                ctx.error(
                    *pos,
                    &join(&path, "depends_on"),
                    format!("step `{dep}` depends on itself"),
                );
                graph_ok = false;
            } else if !index.contains_key(dep.as_str()) {
                let hint = did_you_mean(dep, steps.iter().map(|s| s.name.as_str()))
                    .unwrap_or_else(|| "depends_on lists names of steps in this workflow".into());
                ctx.error_hint(
                    *pos,
                    &join(&path, "depends_on"),
                    format!("no step is named `{dep}`"),
                    hint,
                );
                graph_ok = false;
            }
        }
        if let (Some(from), Some(pos)) = (&step.stdin_from, r.stdin_from) {
            if !step.depends_on.contains(from) {
                let hint = if index.contains_key(from.as_str()) {
                    format!("add `{from}` to this step's `depends_on` so it finishes first")
                } else {
                    did_you_mean(from, steps.iter().map(|s| s.name.as_str()))
                        .unwrap_or_else(|| "name a step listed in this step's `depends_on`".into())
                };
                ctx.error_hint(
                    pos,
                    &join(&path, "stdin_from"),
                    format!("`stdin_from: {from}` is not one of this step's `depends_on`"),
                    hint,
                );
            }
        }
    }
    if graph_ok {
        if let Some(cycle) = find_cycle(steps, &index) {
            let first = cycle[0];
            let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
            ctx.error_hint(
                refs[first].pos,
                &format!("workflow.steps[{first}].depends_on"),
                format!("dependency cycle: {} → {}", names.join(" → "), names[0]),
                "remove one of these dependencies",
            );
        }
    }
}

/// A cycle in the depends_on graph, as step indices, if there is one.
fn find_cycle(steps: &[Step], index: &HashMap<&str, usize>) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        steps: &[Step],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[i] = Mark::Active;
        stack.push(i);
        for dep in &steps[i].depends_on {
            let j = index[dep.as_str()];
            match marks[j] {
                Mark::Active => {
                    let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[start..].to_vec();
                    cycle.reverse();
                    cycle.rotate_right(1);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(j, steps, index, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; steps.len()];
    for i in 0..steps.len() {
        if marks[i] == Mark::New {
            if let Some(c) = visit(i, steps, index, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

pub(super) fn decode_agent(ctx: &mut Ctx, node: &Node, allow: Option<&[String]>) -> Option<Agent> {
    let errors_before = ctx.errors.len();
    let f = ctx.fields(
        node,
        "agent",
        &["command", "args", "prompt", "env"],
        &|name| {
            ["provider", "model", "base_url", "api_key_env"]
                .contains(&name)
                .then(|| format!("`{name}` belongs under the top-level `llm:`"))
        },
    )?;
    let command = ctx
        .required(&f, "command", "agent", "python3")
        .and_then(|n| {
            let c = ctx.nonempty_string(n, "agent.command")?;
            check_program(ctx, &c, n.pos, "agent.command", allow);
            Some(c)
        });
    let args = f
        .get("args")
        .map(|n| ctx.text_list(n, "agent.args"))
        .unwrap_or_default();
    let prompt = f.get("prompt").and_then(|n| ctx.string(n, "agent.prompt"));
    let env = f
        .get("env")
        .map(|n| ctx.env(n, "agent.env"))
        .unwrap_or_default();
    if ctx.errors.len() != errors_before {
        return None;
    }
    Some(Agent {
        command: command?,
        args,
        prompt,
        env,
    })
}

pub(super) fn decode_llm(ctx: &mut Ctx, node: &Node) -> Option<Llm> {
    let errors_before = ctx.errors.len();
    let f = ctx.fields(
        node,
        "llm",
        &["provider", "model", "base_url", "api_key_env"],
        &no_misplaced,
    )?;
    let provider = ctx
        .required(&f, "provider", "llm", "openai")
        .and_then(|n| ctx.nonempty_string(n, "llm.provider"));
    let model = ctx
        .required(&f, "model", "llm", "gpt-4o-mini")
        .and_then(|n| ctx.nonempty_string(n, "llm.model"));
    let base_url = f.get("base_url").and_then(|n| {
        let url = ctx.nonempty_string(n, "llm.base_url")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            ctx.error(
                n.pos,
                "llm.base_url",
                format!("`{url}` is not an http:// or https:// URL"),
            );
            return None;
        }
        Some(url)
    });
    let api_key_env = f.get("api_key_env").and_then(|n| {
        let name = ctx.nonempty_string(n, "llm.api_key_env")?;
        if !is_env_name(&name) {
            ctx.error_hint(
                n.pos,
                "llm.api_key_env",
                format!("`{name}` is not an environment variable name"),
                "name the host variable that holds the key, e.g. `OPENAI_API_KEY` (never the key itself)",
            );
            return None;
        }
        Some(name)
    });
    if ctx.errors.len() != errors_before {
        return None;
    }
    Some(Llm {
        provider: provider?,
        model: model?,
        base_url,
        api_key_env,
    })
}
