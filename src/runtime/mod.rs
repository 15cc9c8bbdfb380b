//! The runtime: plan a sandbox from a spec, launch the VM, run the steps,
//! collect outputs, clean up.
//!
//! - [`error`]: errors and the documented exit codes;
//! - [`events`]: what a run reports (`--json` prints these);
//! - [`rundir`]: the private run directory and console logs;
//! - [`schedule`]: step order with `depends_on`;
//! - [`files`]: packing inputs, unpacking outputs safely;
//! - [`cancel`]: Ctrl-C handling;
//! - [`launch`]: local or nested lane, one launcher per process;
//! - [`sandbox`]: one sandbox's lifecycle (create, exec, files, stop), used by
//!   `run`, `exec`, `shell`, the daemon and the MCP server.

pub mod cancel;
pub mod error;
pub mod events;
pub mod files;
pub mod guest;
pub mod interactive;
pub mod launch;
pub mod plan;
pub mod rundir;
pub mod sandbox;
pub mod schedule;
pub mod session;
pub mod vm;
pub mod workflow;

pub use error::{exit_code, Error, Result};
pub use events::{Event, EventSink, Stream};
pub use voidbox_oci::PullPolicy;
