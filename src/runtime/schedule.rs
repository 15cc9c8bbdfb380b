//! Step order: a step runs when all of its `depends_on` steps succeeded;
//! among ready steps, file order wins. A failed step's dependents (direct and
//! indirect) are skipped; independent steps still run.

use voidbox_spec::Step;

use super::plan::StepPlan;

/// What the schedule needs to know about a step.
pub trait StepDeps {
    /// Unique name.
    fn name(&self) -> &str;
    /// Steps that must succeed first.
    fn depends_on(&self) -> &[String];
    /// Step whose stdout feeds this one's stdin.
    fn stdin_from(&self) -> Option<&str>;
}

impl StepDeps for Step {
    fn name(&self) -> &str {
        &self.name
    }
    fn depends_on(&self) -> &[String] {
        &self.depends_on
    }
    fn stdin_from(&self) -> Option<&str> {
        self.stdin_from.as_deref()
    }
}

impl StepDeps for StepPlan {
    fn name(&self) -> &str {
        &self.name
    }
    fn depends_on(&self) -> &[String] {
        &self.depends_on
    }
    fn stdin_from(&self) -> Option<&str> {
        self.stdin_from.as_deref()
    }
}

/// What happened to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// Not started.
    Pending,
    /// Finished with exit code 0.
    Succeeded,
    /// Finished non-zero, was killed, or timed out.
    Failed,
    /// Not run because a dependency did not succeed.
    Skipped,
}

/// Tracks step states and hands out the next step to run.
#[derive(Debug)]
pub struct Schedule<'a, S: StepDeps> {
    steps: &'a [S],
    states: Vec<StepState>,
}

/// The next thing to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Run the step at this index.
    Run(usize),
    /// Skip the step at this index because of the named dependency.
    Skip(usize, String),
    /// Nothing left.
    Done,
}

impl<'a, S: StepDeps> Schedule<'a, S> {
    /// A schedule over validated steps (names unique, no cycles).
    pub fn new(steps: &'a [S]) -> Self {
        Schedule {
            steps,
            states: vec![StepState::Pending; steps.len()],
        }
    }

    fn state_of(&self, name: &str) -> StepState {
        self.steps
            .iter()
            .position(|s| s.name() == name)
            .map_or(StepState::Failed, |i| self.states[i])
    }

    /// The next step to run or skip.
    pub fn next_step(&mut self) -> Next {
        for (i, step) in self.steps.iter().enumerate() {
            if self.states[i] != StepState::Pending {
                continue;
            }
            let blocked = step
                .depends_on()
                .iter()
                .find(|d| matches!(self.state_of(d), StepState::Failed | StepState::Skipped));
            if let Some(dep) = blocked {
                self.states[i] = StepState::Skipped;
                return Next::Skip(i, dep.clone());
            }
            if step
                .depends_on()
                .iter()
                .all(|d| self.state_of(d) == StepState::Succeeded)
            {
                return Next::Run(i);
            }
        }
        Next::Done
    }

    /// Records a finished step.
    pub fn finish(&mut self, index: usize, succeeded: bool) {
        self.states[index] = if succeeded {
            StepState::Succeeded
        } else {
            StepState::Failed
        };
    }

    /// Whether some later step reads this step's stdout.
    pub fn stdout_is_needed(&self, index: usize) -> bool {
        let name = self.steps[index].name();
        self.steps.iter().any(|s| s.stdin_from() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn steps(yaml_steps: &str) -> Vec<Step> {
        let text =
            format!("api_version: v1\nkind: workflow\nname: t\nworkflow:\n  steps:\n{yaml_steps}");
        voidbox_spec::parse_str(&text, "t", Path::new("/"))
            .unwrap()
            .workflow
            .unwrap()
            .steps
    }

    fn drive(steps: &[Step], fail: &[&str]) -> Vec<String> {
        let mut s = Schedule::new(steps);
        let mut log = Vec::new();
        loop {
            match s.next_step() {
                Next::Run(i) => {
                    let name = &steps[i].name;
                    log.push(format!("run {name}"));
                    s.finish(i, !fail.contains(&name.as_str()));
                }
                Next::Skip(i, dep) => log.push(format!("skip {} ({dep})", steps[i].name)),
                Next::Done => return log,
            }
        }
    }

    #[test]
    fn dependencies_order_steps_and_file_order_breaks_ties() {
        let s = steps("    - {name: c, shell: x, depends_on: [b]}\n    - {name: a, shell: x}\n    - {name: b, shell: x, depends_on: [a]}\n    - {name: d, shell: x}\n");
        assert_eq!(drive(&s, &[]), ["run a", "run b", "run c", "run d"]);
    }

    #[test]
    fn failure_skips_dependents_only() {
        let s = steps("    - {name: a, shell: x}\n    - {name: b, shell: x, depends_on: [a]}\n    - {name: c, shell: x, depends_on: [b], stdin_from: b}\n    - {name: d, shell: x}\n");
        assert_eq!(
            drive(&s, &["a"]),
            ["run a", "skip b (a)", "skip c (b)", "run d"]
        );
        let sched = Schedule::new(&s);
        assert!(sched.stdout_is_needed(1));
        assert!(!sched.stdout_is_needed(0));
    }
}
