//! Reports on stdout that end quietly when their reader goes away.
//!
//! `nandbox check --json | head -1` is ordinary command-line use: once `head` exits, the next
//! write fails with `BrokenPipe`. `println!` panics on that, so tools write through [`outln!`],
//! which returns the error, and `main` treats a broken pipe as the end of the output: no panic
//! and no error message, as `cat` or `grep` would end.

use std::io::Write;

/// Writes one line to stdout; the error of a closed pipe is returned, not a panic.
pub fn line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{args}")?;
    out.flush()
}

/// Writes text to stdout as it is (no newline added).
pub fn text(s: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()
}

/// Whether `e` (or an error it wraps) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that returns `std::io::Result<()>` instead of panicking on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
