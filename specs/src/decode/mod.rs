//! Node tree → typed model. Each decoder records every problem it finds in
//! [`Ctx`] and keeps going, so one run reports all of a file's errors.

mod sandbox;
mod spec;
mod steps;

use std::collections::BTreeMap;

use crate::error::Diagnostic;
use crate::node::{Node, Pos, Value};

pub(crate) use spec::decode_spec;
pub use steps::is_allowed;

/// Collects diagnostics while decoding.
#[derive(Default)]
pub(crate) struct Ctx {
    pub errors: Vec<Diagnostic>,
}

/// The entries of a mapping, unknown and duplicate keys already reported.
pub(crate) struct Fields<'n> {
    pub pos: Pos,
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// The value of `name`, or `None` when absent or `null`.
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .filter(|v| v.value != Value::Null)
    }
}

/// Joins a parent path and a field name.
pub(crate) fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

impl Ctx {
    pub fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.errors.push(Diagnostic::new(pos, path, message));
    }

    pub fn error_hint(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(Diagnostic::new(pos, path, message).with_hint(hint));
    }

    fn wrong_type(&mut self, node: &Node, path: &str, expected: &str) {
        let found = match &node.value {
            Value::Str(s) => format!("the string \"{}\"", shorten(s)),
            Value::Int(i) => format!("the integer {i}"),
            Value::Bool(b) => format!("the boolean {b}"),
            _ => node.type_name().to_string(),
        };
        self.error(
            node.pos,
            path,
            format!("expected {expected}, found {found}"),
        );
    }

    /// A mapping's entries; reports a non-mapping, non-string keys, duplicate
    /// keys and unknown keys (with a did-you-mean).
    pub fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
        misplaced: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, path, "a mapping of fields");
            return None;
        };
        let mut fields = Fields {
            pos: node.pos,
            entries: Vec::new(),
        };
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                let raw = key.raw.clone().unwrap_or_else(|| key.type_name().into());
                self.error(
                    key.pos,
                    path,
                    format!("field names must be strings, found `{raw}`"),
                );
                continue;
            };
            if let Some((_, first)) = fields.entries.iter().find(|(k, _)| k == name) {
                let first_line = first.pos.line;
                self.error(
                    key.pos,
                    &join(path, name),
                    format!("duplicate field `{name}` (first set on line {first_line})"),
                );
                continue;
            }
            if !known.contains(&name.as_str()) {
                let where_ = if path.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in `{path}`")
                };
                let message = format!("unknown field `{name}` {where_}");
                let hint = misplaced(name)
                    .or_else(|| did_you_mean(name, known.iter().copied()))
                    .unwrap_or_else(|| format!("known fields: {}", known.join(", ")));
                self.error_hint(key.pos, &join(path, name), message, hint);
                continue;
            }
            fields.entries.push((name.as_str(), value));
        }
        Some(fields)
    }

    /// A required field; reports its absence at the mapping's position.
    pub fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        path: &str,
        example: &str,
    ) -> Option<&'n Node> {
        let node = fields.get(name);
        if node.is_none() {
            self.error_hint(
                fields.pos,
                path,
                format!("missing required field `{name}`"),
                format!("add `{name}: {example}`"),
            );
        }
        node
    }

    /// A string (quoted or plain text; numbers and booleans are refused).
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let raw = node.raw.clone().unwrap_or_default();
                self.wrong_type(node, path, "a string");
                if let Some(last) = self.errors.last_mut() {
                    last.hint = Some(format!("quote it: \"{raw}\""));
                }
                None
            }
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    /// A non-empty string.
    pub fn nonempty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(node.pos, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A scalar used as text: strings, and plain numbers/booleans as written
    /// (`args: [-n, 5]`, `env: {DEBUG: 1}`).
    pub fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match (&node.value, &node.raw) {
            (Value::Str(s), _) => Some(s.clone()),
            (Value::Int(_) | Value::Float(_) | Value::Bool(_), Some(raw)) => Some(raw.clone()),
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.wrong_type(node, path, "true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn uint(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        match node.value {
            Value::Int(i) if i >= 0 && (min..=max).contains(&(i as u64)) => Some(i as u64),
            Value::Int(i) => {
                self.error(
                    node.pos,
                    path,
                    format!("{i} is out of range: must be between {min} and {max}"),
                );
                None
            }
            _ => {
                self.wrong_type(node, path, &format!("an integer between {min} and {max}"));
                None
            }
        }
    }

    pub fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, path, "a list");
                None
            }
        }
    }

    /// A list of text items (see [`Ctx::text`]).
    pub fn text_list(&mut self, node: &Node, path: &str) -> Vec<String> {
        let Some(items) = self.list(node, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.text(item, &format!("{path}[{i}]")))
            .collect()
    }

    /// An environment map: valid variable names, text values without NUL.
    pub fn env(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, path, "a mapping of NAME: value");
            return env;
        };
        for (key, value) in entries {
            let Some(name) = self.text(key, path) else {
                continue;
            };
            let vpath = join(path, &name);
            if !is_env_name(&name) {
                self.error_hint(
                    key.pos,
                    &vpath,
                    format!("`{name}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
                continue;
            }
            if env.contains_key(&name) {
                self.error(key.pos, &vpath, format!("duplicate variable `{name}`"));
                continue;
            }
            let Some(text) = (if value.value == Value::Null {
                Some(String::new())
            } else {
                self.text(value, &vpath)
            }) else {
                continue;
            };
            if text.contains('\0') {
                self.error(value.pos, &vpath, "value contains a NUL byte");
                continue;
            }
            env.insert(name, text);
        }
        env
    }

    /// An absolute guest path without `..` components.
    pub fn guest_path(&mut self, node: &Node, path: &str) -> Option<String> {
        let p = self.nonempty_string(node, path)?;
        if !p.starts_with('/') {
            self.error_hint(
                node.pos,
                path,
                format!("guest path `{p}` is not absolute"),
                format!("write it as `/{}`", p.trim_start_matches("./")),
            );
            return None;
        }
        if p.split('/').any(|c| c == "..") || p.contains('\0') {
            self.error(
                node.pos,
                path,
                format!("guest path `{p}` must not contain `..`"),
            );
            return None;
        }
        Some(p)
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 63 characters.
pub(crate) fn is_simple_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// "did you mean `x`?" for the closest candidate, if any is close enough.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let squash = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    let wanted = squash(name);
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = if squash(candidate) == wanted {
            0
        } else {
            strsim::damerau_levenshtein(name, candidate)
        };
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    let (distance, candidate) = best?;
    // One- and two-letter names are too short for a guess to mean anything.
    if distance > 0 && name.chars().count() < 3 {
        return None;
    }
    let limit = (name.len().max(candidate.len()) / 3).max(1);
    (distance <= limit).then(|| format!("did you mean `{candidate}`?"))
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = ["memory_mb", "vcpus", "image"];
        assert_eq!(
            did_you_mean("memroy_mb", known.iter().copied()).as_deref(),
            Some("did you mean `memory_mb`?")
        );
        assert_eq!(
            did_you_mean("memoryMB", known.iter().copied()).as_deref(),
            Some("did you mean `memory_mb`?")
        );
        assert_eq!(
            did_you_mean("vcpu", known.iter().copied()).as_deref(),
            Some("did you mean `vcpus`?")
        );
        assert_eq!(did_you_mean("zzzzzz", known.iter().copied()), None);
    }

    #[test]
    fn names() {
        assert!(is_env_name("_A1"));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name("A-B"));
        assert!(is_simple_name("build.step-1_a"));
        assert!(!is_simple_name("-x"));
        assert!(!is_simple_name("a b"));
    }
}
