//! Reports on stdout that end quietly when their reader goes away.
//!
//! `nandbox check --json | head -1` is ordinary command-line use: once `head` exits, the next
//! write fails with `BrokenPipe`. `println!` panics on that, so tools write through [`outln!`],
//! which returns the error, and `main` treats a broken pipe as the end of the output: no panic
//! and no error message, as `cat` or `grep` would end.

use std::io::Write;

/// The reader of stdout went away: the only broken pipe that ends a report quietly. A broken
/// pipe elsewhere (a control endpoint's socket closed under a request) is a failure.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// A write error of stdout, a closed pipe marked as [`StdoutClosed`].
fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

/// Writes one line to stdout; the error of a closed pipe is returned, not a panic.
pub fn line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{args}")
        .and_then(|()| out.flush())
        .map_err(mark)
}

/// Writes text to stdout as it is (no newline added).
pub fn text(s: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(mark)
}

/// Whether `e` (or an error it wraps) is a write to a closed stdout, as [`line`] and [`text`]
/// report it.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// `println!` that returns `std::io::Result<()>` instead of panicking on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
