//! A position-aware value tree: every node remembers the line and column it
//! came from, so validation can point at the exact spot of a mistake.
//!
//! YAML is parsed with `saphyr-parser` (YAML 1.2); JSON is YAML 1.2 flow
//! syntax, so the same tree serves both. Plain scalars are resolved with the
//! YAML 1.2 core schema (`yes`/`on` stay strings).

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::error::Diagnostic;

/// Upper bound on nodes built from one file, aliases included (stops
/// "billion laughs" documents from exhausting memory).
const MAX_NODES: usize = 100_000;
/// Upper bound on nesting depth.
const MAX_DEPTH: usize = 64;

/// A 1-based line and column in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub col: usize,
}

impl Pos {
    fn from_span(span: &Span) -> Self {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A value in the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string (quoted, block, or a plain scalar that is nothing else).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping in source order (duplicates are reported, not kept).
    Map(Vec<(Node, Node)>),
}

/// A value plus where it starts in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
    /// The source text of a plain scalar (so `1.10` in an argument list
    /// stays `1.10` when used as a string).
    pub raw: Option<String>,
}

impl Node {
    /// A short description of the node's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parses `text` into one node tree. Syntax errors are returned as
/// diagnostics (the parser stops at the first one).
pub fn parse(text: &str) -> Result<Node, Diagnostic> {
    if looks_like_json(text) {
        // serde_json gives precise messages for JSON syntax slips (trailing
        // commas, missing quotes) that a YAML parser would describe vaguely.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            return Err(Diagnostic::new(
                Pos {
                    line: e.line().max(1),
                    col: e.column().max(1),
                },
                "",
                format!("invalid JSON: {}", strip_json_position(&e.to_string())),
            ));
        }
    }
    Builder::default().run(text)
}

fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// serde_json appends " at line L column C"; we print the position ourselves.
fn strip_json_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn run(mut self, text: &str) -> Result<Node, Diagnostic> {
        for item in Parser::new_from_str(text) {
            let (event, span) = item.map_err(|e| {
                let m = e.marker();
                Diagnostic::new(
                    Pos {
                        line: m.line().max(1),
                        col: m.col() + 1,
                    },
                    "",
                    format!("invalid YAML: {}", e.info()),
                )
            })?;
            let pos = Pos::from_span(&span);
            match event {
                Event::DocumentStart(_) => {
                    self.documents += 1;
                    if self.documents > 1 {
                        return Err(Diagnostic::new(
                            pos,
                            "",
                            "a spec file holds exactly one document; found a second one (`---`)",
                        ));
                    }
                }
                Event::Scalar(text, style, anchor, tag) => {
                    let value = match tag {
                        Some(tag) if tag.is_yaml_core_schema() && tag.suffix == "str" => {
                            Value::Str(text.to_string())
                        }
                        Some(tag) => {
                            return Err(Diagnostic::new(
                                pos,
                                "",
                                format!(
                                    "YAML tags such as `{tag}` are not supported in spec files"
                                ),
                            ))
                        }
                        None if style == ScalarStyle::Plain => resolve_plain(&text),
                        None => Value::Str(text.to_string()),
                    };
                    let raw = (style == ScalarStyle::Plain).then(|| text.to_string());
                    self.push(Node { value, pos, raw }, anchor)?;
                }
                Event::SequenceStart(anchor, tag) => {
                    reject_collection_tag(tag.as_deref(), pos)?;
                    self.open(Frame::Seq(pos, anchor, Vec::new()), pos)?;
                }
                Event::MappingStart(anchor, tag) => {
                    reject_collection_tag(tag.as_deref(), pos)?;
                    self.open(Frame::Map(pos, anchor, Vec::new(), None), pos)?;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (node, anchor) = match self.stack.pop() {
                        Some(Frame::Seq(p, a, items)) => {
                            (Node::collection(Value::Seq(items), p), a)
                        }
                        Some(Frame::Map(p, a, entries, _)) => {
                            (Node::collection(Value::Map(entries), p), a)
                        }
                        None => unreachable!("the parser balances collection events"),
                    };
                    self.push(node, anchor)?;
                }
                Event::Alias(id) => {
                    let node = self.anchors.get(&id).cloned().ok_or_else(|| {
                        Diagnostic::new(pos, "", "alias refers to an unknown anchor")
                    })?;
                    self.nodes += count_nodes(&node);
                    self.check_size(pos)?;
                    self.push(node, 0)?;
                }
                Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            }
        }
        self.root.ok_or_else(|| {
            Diagnostic::new(
                Pos { line: 1, col: 1 },
                "",
                "the spec file is empty; start with `api_version: v1`",
            )
        })
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Diagnostic::new(
                pos,
                "",
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn check_size(&self, pos: Pos) -> Result<(), Diagnostic> {
        if self.nodes > MAX_NODES {
            return Err(Diagnostic::new(
                pos,
                "",
                format!("the spec expands to more than {MAX_NODES} values (alias bomb?)"),
            ));
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        self.nodes += 1;
        self.check_size(node.pos)?;
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

impl Node {
    fn collection(value: Value, pos: Pos) -> Self {
        Node {
            value,
            pos,
            raw: None,
        }
    }
}

fn reject_collection_tag(tag: Option<&saphyr_parser::Tag>, pos: Pos) -> Result<(), Diagnostic> {
    match tag {
        Some(tag) => Err(Diagnostic::new(
            pos,
            "",
            format!("YAML tags such as `{tag}` are not supported in spec files"),
        )),
        None => Ok(()),
    }
}

fn count_nodes(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(count_nodes).sum(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| count_nodes(k) + count_nodes(v))
            .sum(),
        _ => 0,
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(v) = i64::from_str_radix(hex, 16) {
                return Value::Int(v);
            }
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            if let Ok(v) = i64::from_str_radix(oct, 8) {
                return Value::Int(v);
            }
        }
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(v) = text.parse::<i64>() {
            return Value::Int(v);
        }
    }
    if is_core_float(digits) {
        if let Ok(v) = text.parse::<f64>() {
            return Value::Float(v);
        }
    }
    Value::Str(text.to_string())
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` (sign already removed).
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit()))
                && (!int.is_empty() || !frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_map(text: &str) -> Vec<(Node, Node)> {
        match parse(text).unwrap().value {
            Value::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based() {
        let m = root_map("a: 1\nb:\n  c: x\n");
        assert_eq!(m[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(m[0].1.pos, Pos { line: 1, col: 4 });
        let Value::Map(inner) = &m[1].1.value else {
            panic!()
        };
        assert_eq!(inner[0].0.pos, Pos { line: 3, col: 3 });
    }

    #[test]
    fn core_schema_scalars() {
        assert_eq!(resolve_plain("yes"), Value::Str("yes".into()));
        assert_eq!(resolve_plain("true"), Value::Bool(true));
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(resolve_plain("-12"), Value::Int(-12));
        assert_eq!(resolve_plain("0x1f"), Value::Int(31));
        assert_eq!(resolve_plain("1.5e3"), Value::Float(1500.0));
        assert_eq!(resolve_plain("1.2.3"), Value::Str("1.2.3".into()));
        assert_eq!(resolve_plain("v1"), Value::Str("v1".into()));
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let m = root_map("a: \"12\"\nb: '1'\n");
        assert_eq!(m[0].1.value, Value::Str("12".into()));
        assert_eq!(m[1].1.value, Value::Str("1".into()));
    }

    #[test]
    fn json_is_parsed_with_positions() {
        let m = root_map("{\n  \"a\": 1,\n  \"b\": [true]\n}\n");
        assert_eq!(m[1].0.pos.line, 3);
        assert_eq!(m[0].1.value, Value::Int(1));
    }

    #[test]
    fn json_syntax_error_has_position() {
        let e = parse("{\n  \"a\": 1,\n}\n").unwrap_err();
        assert_eq!(e.pos.line, 3);
        assert!(e.message.contains("invalid JSON"), "{}", e.message);
    }

    #[test]
    fn yaml_syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
        assert!(e.pos.line >= 1);
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = format!("*a{}", i - 1);
            let list = [prev.as_str(); 10].join(", ");
            doc.push_str(&format!("a{i}: &a{i} [{list}]\n"));
        }
        let e = parse(&doc).unwrap_err();
        assert!(e.message.contains("alias bomb"), "{}", e.message);
    }

    #[test]
    fn aliases_resolve() {
        let m = root_map("a: &x {k: v}\nb: *x\n");
        assert_eq!(m[0].1.value, m[1].1.value);
    }

    #[test]
    fn empty_and_multi_document_files_are_refused() {
        assert!(parse("").unwrap_err().message.contains("empty"));
        assert!(parse("a: 1\n---\nb: 2\n")
            .unwrap_err()
            .message
            .contains("exactly one document"));
    }

    #[test]
    fn tags_are_refused_except_str() {
        let m = root_map("a: !!str 12\n");
        assert_eq!(m[0].1.value, Value::Str("12".into()));
        assert!(parse("a: !custom 1\n")
            .unwrap_err()
            .message
            .contains("tags"));
    }
}
