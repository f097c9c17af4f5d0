//! Advisory locks on files (flock), released when the returned file is dropped.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How to take the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Readers: many at once.
    Shared,
    /// One writer, waiting for the others.
    Exclusive,
    /// One holder; fail at once (`WouldBlock`) if another has it.
    ExclusiveNow,
}

/// Opens (creating) `path` and locks it.
pub fn lock(path: &Path, mode: LockMode) -> io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let operation = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
        LockMode::ExclusiveNow => libc::LOCK_EX | libc::LOCK_NB,
    };
    // SAFETY: flock(2) on a file we own; the lock goes with the file's last descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}
