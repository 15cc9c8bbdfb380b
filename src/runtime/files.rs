//! Host side of outputs: unpacking what the guest sends back so that nothing
//! is ever written outside the output's host directory (no `..`, no absolute
//! paths, no writing through symlinks, no links pointing out, not even
//! through chains of links), and no more than [`MAX_OUTPUT_ENTRIES`] entries.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::error::{Error, Result};

/// Most entries one output directory may hold (files, directories, links).
pub const MAX_OUTPUT_ENTRIES: u64 = 1_000_000;
/// Most symlinks followed while resolving one link (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

/// A relative path made of normal components only, or an error naming it.
fn clean_relative(path: &Path, what: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(Error::Host(format!(
                "{what}: entry `{}` would be written outside its host directory; it was refused",
                path.display()
            )))
            }
        }
    }
    Ok(out)
}

/// Makes sure every directory from `root` down to `rel`'s parent exists and is
/// a real directory (not a symlink), creating missing ones.
fn ensure_parents(root: &Path, rel: &Path, what: &str) -> Result<()> {
    let mut cur = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Error::Host(format!(
                    "{what}: `{}` goes through a non-directory or a symlink; it was refused",
                    rel.display()
                )))
            }
            Err(_) => fs::create_dir(&cur)
                .map_err(|e| Error::host(format!("cannot create {}", cur.display()), e))?,
        }
    }
    Ok(())
}

/// Removes a file or symlink at `path` (not a directory), if any.
fn remove_non_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Err(Error::Host(format!(
            "cannot replace directory {} with a file",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path)
            .map_err(|e| Error::host(format!("cannot replace {}", path.display()), e)),
        Err(_) => Ok(()),
    }
}

/// Whether a symlink at `rel` with `target` stays inside the root, lexically.
fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = rel.parent().map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// One step of a path being resolved.
enum Step {
    Up,
    Name(OsString),
}

/// The steps of a relative link target; `None` if it is absolute.
fn steps_of(target: &Path) -> Option<VecDeque<Step>> {
    let mut out = VecDeque::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push_back(Step::Name(n.to_os_string())),
            Component::ParentDir => out.push_back(Step::Up),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether the symlink at `dest/rel` resolves inside `dest`, following every
/// link on disk the way the kernel would (so chains such as `a/b -> ..`,
/// `x -> a/b/a/b/../../secret` are caught). Below a component that does not
/// exist, `..` counts as leaving: whatever appears there later could be a link.
fn link_resolves_inside(dest: &Path, rel: &Path) -> bool {
    let mut at: Vec<OsString> = rel
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let Some(name) = rel.file_name() else {
        return false;
    };
    let mut todo = VecDeque::from([Step::Name(name.to_os_string())]);
    let mut hops = 0;
    let mut on_disk = true;
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Up => {
                if !on_disk || at.pop().is_none() {
                    return false;
                }
            }
            Step::Name(n) => {
                at.push(n);
                if !on_disk {
                    continue;
                }
                let path: PathBuf = dest.join(at.iter().collect::<PathBuf>());
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => {
                        hops += 1;
                        let Some(mut next) = fs::read_link(&path)
                            .ok()
                            .filter(|_| hops <= MAX_LINK_HOPS)
                            .and_then(|t| steps_of(&t))
                        else {
                            return false;
                        };
                        at.pop();
                        next.extend(todo.drain(..));
                        todo = next;
                    }
                    Ok(_) => {}
                    Err(_) => on_disk = false,
                }
            }
        }
    }
    true
}

/// Every symlink under `dest` (not following any), relative to it.
fn symlinks_under(dest: &Path) -> Vec<PathBuf> {
    let mut links = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(dest.join(&d)).into_iter().flatten().flatten() {
            let rel = d.join(e.file_name());
            match e.file_type() {
                Ok(t) if t.is_symlink() => links.push(rel),
                Ok(t) if t.is_dir() => dirs.push(rel),
                _ => {}
            }
        }
    }
    links
}

/// After an unpack: no symlink under `dest` may resolve outside it. Links this
/// unpack created (`created`) that do are removed; the first one is reported.
fn check_links(dest: &Path, created: &[PathBuf], what: &str) -> Result<()> {
    let created: std::collections::HashSet<&PathBuf> = created.iter().collect();
    let mut first = None;
    for rel in symlinks_under(dest) {
        if link_resolves_inside(dest, &rel) {
            continue;
        }
        let target = fs::read_link(dest.join(&rel)).unwrap_or_default();
        if created.contains(&rel) {
            let _ = fs::remove_file(dest.join(&rel));
            first.get_or_insert(Error::Host(format!(
                "{what}: symlink `{}` -> `{}` resolves outside its host directory (through other links); it was refused and removed",
                rel.display(),
                target.display()
            )));
        } else {
            first.get_or_insert(Error::Host(format!(
                "{what}: with the new files, the existing symlink `{}` -> `{}` in {} resolves outside that directory; remove it, or copy outputs into an empty directory",
                rel.display(),
                target.display(),
                dest.display()
            )));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Unpacks a tar stream from the guest into `dest` (created if missing).
/// `what` names the output in errors. Returns the bytes of file data written.
/// At most [`MAX_OUTPUT_ENTRIES`] entries are unpacked; after the last one,
/// every symlink under `dest` must resolve inside it.
pub fn unpack_into(reader: impl Read, dest: &Path, what: &str) -> Result<u64> {
    fs::create_dir_all(dest)
        .map_err(|e| Error::host(format!("cannot create {}", dest.display()), e))?;
    let mut created_links = Vec::new();
    let unpacked = unpack_entries(reader, dest, what, &mut created_links);
    let links = check_links(dest, &created_links, what);
    let total = unpacked?;
    links?;
    Ok(total)
}

fn unpack_entries(
    reader: impl Read,
    dest: &Path,
    what: &str,
    created_links: &mut Vec<PathBuf>,
) -> Result<u64> {
    let mut archive = tar::Archive::new(reader);
    let mut total = 0u64;
    let mut count = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| Error::host(format!("{what}: bad archive from the guest"), e))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::host(format!("{what}: bad archive from the guest"), e))?;
        count += 1;
        if count > MAX_OUTPUT_ENTRIES {
            return Err(Error::Host(format!(
                "{what}: the guest sent more than {MAX_OUTPUT_ENTRIES} entries; the rest was refused (pack many small files into an archive in the guest)"
            )));
        }
        let raw = entry
            .path()
            .map_err(|e| Error::host(format!("{what}: bad entry name"), e))?
            .into_owned();
        let rel = clean_relative(&raw, what)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        ensure_parents(dest, &rel, what)?;
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        if kind.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(Error::Host(format!(
                        "{what}: `{}` exists on the host and is not a directory",
                        rel.display()
                    )))
                }
                Err(_) => fs::create_dir(&target)
                    .map_err(|e| Error::host(format!("cannot create {}", target.display()), e))?,
            }
            let _ = fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700));
        } else if kind.is_file() {
            remove_non_dir(&target)?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(|e| Error::host(format!("cannot write {}", target.display()), e))?;
            total += std::io::copy(&mut entry, &mut file)
                .map_err(|e| Error::host(format!("cannot write {}", target.display()), e))?;
            file.flush()
                .map_err(|e| Error::host(format!("cannot write {}", target.display()), e))?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(|e| Error::host(format!("{what}: bad link"), e))?
                .ok_or_else(|| Error::Host(format!("{what}: symlink without a target")))?
                .into_owned();
            if !link_stays_inside(&rel, &link) {
                return Err(Error::Host(format!(
                    "{what}: symlink `{}` -> `{}` points outside its host directory; it was refused",
                    rel.display(),
                    link.display()
                )));
            }
            remove_non_dir(&target)?;
            std::os::unix::fs::symlink(&link, &target)
                .map_err(|e| Error::host(format!("cannot create {}", target.display()), e))?;
            created_links.push(rel.clone());
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|e| Error::host(format!("{what}: bad link"), e))?
                .ok_or_else(|| Error::Host(format!("{what}: hard link without a target")))?;
            let src_rel = clean_relative(&link, what)?;
            let src = dest.join(&src_rel);
            ensure_parents(dest, &src_rel, what)?;
            match fs::symlink_metadata(&src) {
                Ok(m) if m.file_type().is_file() => {}
                _ => {
                    return Err(Error::Host(format!(
                        "{what}: hard link `{}` must point at a file unpacked before it",
                        rel.display()
                    )))
                }
            }
            remove_non_dir(&target)?;
            fs::hard_link(&src, &target)
                .map_err(|e| Error::host(format!("cannot link {}", target.display()), e))?;
        } else {
            tracing::warn!(entry = %rel.display(), "{what}: skipping a special file");
        }
    }
    Ok(total)
}

/// Writes one file from the guest as `dest/<name>`, streaming from `data`;
/// a partial file is removed on failure.
pub fn write_file_into(mut data: impl Read, dest: &Path, name: &str, mode: u32) -> Result<u64> {
    let rel = clean_relative(Path::new(name), name)?;
    if rel.components().count() != 1 {
        return Err(Error::Host(format!("bad output file name `{name}`")));
    }
    fs::create_dir_all(dest)
        .map_err(|e| Error::host(format!("cannot create {}", dest.display()), e))?;
    let target = dest.join(rel);
    remove_non_dir(&target)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .map_err(|e| Error::host(format!("cannot write {}", target.display()), e))?;
    match std::io::copy(&mut data, &mut file).and_then(|n| file.flush().map(|()| n)) {
        Ok(n) => Ok(n),
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(&target);
            Err(Error::host(format!("cannot write {}", target.display()), e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar with raw (unchecked) names, the way a hostile guest could.
    fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn round_trip_of_a_directory() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("sub")).unwrap();
        fs::write(src.path().join("sub/a.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", src.path().join("link")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", src.path()).unwrap();
        let tar = b.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let out = dest.path().join("out");
        assert_eq!(unpack_into(&tar[..], &out, "t").unwrap(), 5);
        assert_eq!(fs::read(out.join("sub/a.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(out.join("link")).unwrap(), b"hello");
        // Unpacking again over the same directory replaces files.
        unpack_into(&tar[..], &out, "t").unwrap();
    }

    #[test]
    fn escapes_are_refused() {
        use tar::EntryType::*;
        let cases: Vec<Vec<u8>> = vec![
            raw_tar(&[("../evil", Regular, "", b"x")]),
            raw_tar(&[("/abs", Regular, "", b"x")]),
            raw_tar(&[("a/../../evil", Regular, "", b"x")]),
            raw_tar(&[("l", Symlink, "/etc", b""), ("l/passwd", Regular, "", b"x")]),
            raw_tar(&[("l", Symlink, "../..", b"")]),
            raw_tar(&[("h", Link, "../outside", b"")]),
        ];
        let outer = tempfile::tempdir().unwrap();
        for (i, tar) in cases.iter().enumerate() {
            let dest = outer.path().join(format!("d{i}"));
            let err = unpack_into(&tar[..], &dest, "output /work/out").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("output /work/out"), "{msg}");
            assert!(
                msg.contains("refused") || msg.contains("must point"),
                "case {i}: {msg}"
            );
        }
        assert!(!outer.path().join("evil").exists());
        assert_eq!(fs::read_dir(outer.path()).unwrap().count(), cases.len());
    }

    /// Every symlink under `dest` that resolves at all resolves inside it.
    fn assert_links_stay_inside(dest: &Path) {
        let root = fs::canonicalize(dest).unwrap();
        for rel in symlinks_under(dest) {
            if let Ok(real) = fs::canonicalize(dest.join(&rel)) {
                assert!(
                    real.starts_with(&root),
                    "{} -> {}",
                    rel.display(),
                    real.display()
                );
            }
        }
    }

    /// Audit H3: links that each look harmless lexically but resolve outside
    /// together (`a/b -> ..` makes `a/b/a/b/../..` climb out).
    #[test]
    fn chained_symlinks_cannot_point_outside() {
        use tar::EntryType::*;
        let outer = tempfile::tempdir().unwrap();
        fs::write(outer.path().join("secret"), b"host secret").unwrap();
        fs::create_dir_all(outer.path().join("home/.ssh")).unwrap();
        fs::write(outer.path().join("home/.ssh/id_rsa"), b"key").unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "x",
                raw_tar(&[
                    ("a", Directory, "", b""),
                    ("a/b", Symlink, "..", b""),
                    ("x", Symlink, "a/b/a/b/../secret", b""),
                ]),
            ),
            (
                "x",
                raw_tar(&[
                    ("a", Directory, "", b""),
                    ("a/b", Symlink, "..", b""),
                    ("x", Symlink, "a/b/a/b/../../.ssh/id_rsa", b""),
                ]),
            ),
            // The chain's link arrives after the link that uses it.
            (
                "x",
                raw_tar(&[
                    ("x", Symlink, "a/b/a/b/../secret", b""),
                    ("a", Directory, "", b""),
                    ("a/b", Symlink, "..", b""),
                ]),
            ),
            // A loop is refused, not followed forever.
            (
                "l1",
                raw_tar(&[("l1", Symlink, "l2/x", b""), ("l2", Symlink, "l1/..", b"")]),
            ),
        ];
        for (i, (bad, tar)) in cases.iter().enumerate() {
            let dest = outer.path().join("home/proj").join(format!("out{i}"));
            let err = unpack_into(&tar[..], &dest, "output /work/out").unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("resolves outside") && msg.contains("output /work/out"),
                "case {i}: {msg}"
            );
            assert!(
                fs::symlink_metadata(dest.join(bad)).is_err(),
                "case {i}: `{bad}` was left behind"
            );
            assert_links_stay_inside(&dest);
        }
    }

    #[test]
    fn links_with_dotdot_that_stay_inside_are_kept() {
        use tar::EntryType::*;
        let tar = raw_tar(&[
            ("lib", Directory, "", b""),
            ("lib/f", Regular, "", b"data"),
            ("bin", Directory, "", b""),
            ("bin/l", Symlink, "../lib/f", b""),
            ("bin/up", Symlink, "..", b""),
            ("bin/via", Symlink, "up/lib/f", b""),
        ]);
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("out");
        unpack_into(&tar[..], &dest, "t").unwrap();
        assert_eq!(fs::read(dest.join("bin/l")).unwrap(), b"data");
        assert_eq!(fs::read(dest.join("bin/via")).unwrap(), b"data");
        assert_links_stay_inside(&dest);
    }

    #[test]
    fn a_planted_symlink_on_the_host_is_not_followed() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("out");
        fs::create_dir(&dest).unwrap();
        let victim = outer.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dest.join("f")).unwrap();
        let tar = raw_tar(&[("f", tar::EntryType::Regular, "", b"new")]);
        unpack_into(&tar[..], &dest, "t").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"new");
    }

    #[test]
    fn single_file_output() {
        let d = tempfile::tempdir().unwrap();
        write_file_into(&b"abc"[..], d.path(), "r.txt", 0o640).unwrap();
        assert_eq!(fs::read(d.path().join("r.txt")).unwrap(), b"abc");
        assert!(write_file_into(&b"x"[..], d.path(), "../x", 0o644).is_err());
    }
}
