//! Download progress bars, shown only when asked and stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Hands out one bar per blob; all no-ops when disabled.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Enabled only if `wanted` and stderr is a tty.
    pub fn new(wanted: bool) -> Self {
        let multi = (wanted && std::io::stderr().is_terminal()).then(MultiProgress::new);
        Progress { multi }
    }

    /// A bar for a blob of `size` bytes labelled `label`.
    pub fn bar(&self, label: &str, size: u64) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar
    }
}
