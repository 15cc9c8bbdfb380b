//! voidbox runtime: plan a sandbox, launch the VMM (locally or in the nested
//! lane), drive the guest agent.

pub mod cli;
pub mod client;
pub mod daemon;
#[doc(hidden)]
pub mod fuzzing;
pub mod jail;
pub mod lane;
pub mod logtail;
pub mod mcp;
pub mod ownerlock;
pub mod runtime;
pub mod service;
