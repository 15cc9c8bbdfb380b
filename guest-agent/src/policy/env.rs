//! Environment variables an exec may not set while a command allowlist is in
//! force: each one can make an allowed program load or run code the request
//! chose (a library, a startup file, a hook command), which would turn any
//! allowed program into "run anything".
//!
//! This is a denylist, so it is best effort: it covers the dynamic loader,
//! shells, Python, Perl, Ruby, Node, glibc's iconv modules and git's command
//! hooks. Allowed programs that take code from their arguments, from files
//! in the working directory (a repository's `.git/config`, a `Makefile`) or
//! run other commands through `PATH` can still be steered; see
//! `docs/security.md`.

/// Names that are refused when they start with one of these prefixes.
pub const DENIED_ENV_PREFIXES: &[&str] = &[
    // glibc/musl loader: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...
    "LD_",
    // bash exported functions override commands in bash scripts.
    "BASH_FUNC_",
    // git: GIT_CONFIG_COUNT/KEY_n/VALUE_n, GIT_CONFIG_PARAMETERS, _GLOBAL, _SYSTEM.
    "GIT_CONFIG",
];

/// Names that are refused exactly.
pub const DENIED_ENV: &[&str] = &[
    // shells: startup files, xtrace prompt expansion, prompt hooks.
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    // the home directory holds rc files (.bashrc, .gitconfig, .npmrc, ...).
    "HOME",
    "XDG_CONFIG_HOME",
    // Python
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "PYTHONINSPECT",
    // Perl
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    // Ruby
    "RUBYOPT",
    "RUBYLIB",
    // Node
    "NODE_OPTIONS",
    "NODE_PATH",
    // glibc iconv modules, hostname aliases
    "GCONV_PATH",
    "HOSTALIASES",
    // git and ssh hook commands
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_EXEC_PATH",
    "GIT_EDITOR",
    "GIT_PAGER",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_PROXY_COMMAND",
    "GIT_EXTERNAL_DIFF",
    "EDITOR",
    "VISUAL",
    "PAGER",
];

/// The first denied name in `names`, if any.
pub fn first_denied<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names.find(|n| DENIED_ENV.contains(n) || DENIED_ENV_PREFIXES.iter().any(|p| n.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_and_interpreter_hooks_are_denied() {
        for n in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "BASH_FUNC_ls%%",
            "GIT_CONFIG_COUNT",
            "PYTHONSTARTUP",
            "NODE_OPTIONS",
            "GCONV_PATH",
        ] {
            assert_eq!(first_denied([n].into_iter()), Some(n), "{n}");
        }
        assert_eq!(
            first_denied(["LANG", "TERM", "PATH", "GIT_AUTHOR_NAME"].into_iter()),
            None
        );
    }
}
