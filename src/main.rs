//! The `voidbox` command.

fn main() -> std::process::ExitCode {
    voidbox::cli::main()
}
