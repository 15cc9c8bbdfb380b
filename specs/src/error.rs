//! Errors: one [`Diagnostic`] per problem, all of a file's problems together
//! in one [`SpecError::Invalid`].

use std::fmt;
use std::path::PathBuf;

use crate::node::Pos;

/// One problem in a spec file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is.
    pub pos: Pos,
    /// Dotted path of the offending field (`sandbox.memory_mb`,
    /// `workflow.steps[2].name`); empty for syntax errors.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell (did-you-mean and the like).
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without a hint.
    pub fn new(pos: Pos, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            pos,
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A list of diagnostics for one file, printed `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file name as given by the user.
    pub file: String,
    /// Sorted by position.
    pub items: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        writeln!(
            f,
            "{}: {n} error{} in spec",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.items {
            write!(f, "  {}:{}: ", self.file, d.pos)?;
            if !d.path.is_empty() {
                write!(f, "{}: ", d.path)?;
            }
            write!(f, "{}", d.message)?;
            if let Some(hint) = &d.hint {
                write!(f, "\n      help: {hint}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read spec file {path}: {error}; check the path passed to --file")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error (not a `source`: the message already includes it).
        error: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("spec file {path} is not UTF-8 text")]
    NotUtf8 {
        /// The path as given.
        path: PathBuf,
    },
    /// The file was read but has problems; all of them are listed.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl SpecError {
    /// The diagnostics, if this is a validation error.
    pub fn diagnostics(&self) -> Option<&[Diagnostic]> {
        match self {
            SpecError::Invalid(d) => Some(&d.items),
            _ => None,
        }
    }
}
