//! Guards for commands that read one file and write another (`zipnn`, `qstore`, and `serve` /
//! `replay` with their image, trace and stats files): the output must not be one of the inputs,
//! and an output written only at the end of a run must be known writable at its start.
//!
//! The tools create (truncate) or rename over their output, so an output path that names the
//! input (the same path, a hard link or a symlink to it) would destroy the input before it is
//! read, or replace it with the result. Files are compared by device and inode, not by path
//! spelling.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Fails when `output` exists and is the same file as `input`.
pub fn ensure_not_input(input: &Path, output: &Path) -> Result<()> {
    // A missing input is reported by the tool when it opens it; a missing output is the
    // common case and cannot be the input.
    let (Ok(i), Ok(o)) = (std::fs::metadata(input), std::fs::metadata(output)) else {
        return Ok(());
    };
    if i.dev() == o.dev() && i.ino() == o.ino() {
        bail!(
            "{} is the same file as {}: writing it would destroy the input; choose another \
             output path",
            output.display(),
            input.display()
        );
    }
    Ok(())
}

/// Fails unless `path` can be written. For files written only at the end of a long run (serve's
/// final stats, a replay's late snapshots): learning then that the directory is missing loses
/// the run. Leaves an existing file as it is and removes the probe it created.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    use std::fs::OpenOptions;
    match OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            OpenOptions::new().write(true).create_new(true).open(path)?;
            std::fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

/// An output written to a temporary file first and moved into place only when complete, so a
/// failed run leaves no half-written file under the output's name.
pub struct Staged {
    /// Where to write.
    pub tmp: PathBuf,
    /// The file the output ends up in: the output path with symlinks resolved, so the result
    /// goes where the link points instead of replacing the link.
    target: PathBuf,
    /// The target is a device, pipe or socket (`/dev/null`, `/dev/stdout`, a FIFO): it is
    /// written through, never renamed over, and the temporary lives in the temp directory.
    special: bool,
}

/// Stages `out`: the temporary is `out` with `extension` next to it, or in the temp directory
/// when `out` is not a regular file.
pub fn stage(out: &Path, extension: &str) -> Result<Staged> {
    let target = match std::fs::canonicalize(out) {
        Ok(resolved) => resolved,
        Err(_) => out.to_path_buf(),
    };
    let special = match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => bail!("{} is a directory", out.display()),
        Ok(m) => !m.is_file(),
        Err(_) => false,
    };
    let tmp = if special {
        std::env::temp_dir().join(format!("nandbox-{}.{extension}", std::process::id()))
    } else {
        target.with_extension(extension)
    };
    Ok(Staged {
        tmp,
        target,
        special,
    })
}

impl Staged {
    /// Moves the finished temporary into place: a rename over a regular file, a copy into a
    /// special one (renaming over `/dev/null` would replace the device with a regular file).
    pub fn finish(&self) -> Result<()> {
        if self.special {
            let mut from = std::fs::File::open(&self.tmp)?;
            let mut to = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.target)
                .with_context(|| format!("opening {}", self.target.display()))?;
            std::io::copy(&mut from, &mut to)
                .with_context(|| format!("writing {}", self.target.display()))?;
            let _ = std::fs::remove_file(&self.tmp);
        } else {
            std::fs::rename(&self.tmp, &self.target)
                .with_context(|| format!("renaming to {}", self.target.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_by_path_or_link_is_refused_others_pass() {
        let dir = std::env::temp_dir().join(format!("nandbox-outpath-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::write(&a, b"x").unwrap();
        assert!(ensure_not_input(&a, &a).is_err());
        assert!(ensure_not_input(&a, &dir.join(".").join("a")).is_err());
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(ensure_not_input(&a, &b).is_err());
        std::fs::remove_file(&b).unwrap();
        assert!(ensure_not_input(&a, &b).is_ok());
        std::fs::write(&b, b"y").unwrap();
        assert!(ensure_not_input(&a, &b).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
