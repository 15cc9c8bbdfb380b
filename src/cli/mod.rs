//! The command line: clap definitions and handlers for each subcommand.
pub mod image;
