//! Result of a command run by a launcher.

use super::protocol::ExitInfo;

/// Output and status of a finished command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitInfo,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}
