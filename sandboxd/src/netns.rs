//! Pinning a pod's network namespace to a path: `/run/sandboxd/netns/<id>`.
//!
//! A namespace lives as long as a process or a mount holds it. Bind-mounting
//! `/proc/<pause>/ns/net` onto a file keeps it alive for CNI DEL even after pause died,
//! and gives tools a path to enter (`nsenter --net=/run/sandboxd/netns/<id>`), the way
//! `ip netns add` does under /run/netns.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Where sandboxd pins pod network namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/run/sandboxd/netns";

#[derive(Debug, thiserror::Error)]
#[error("{step} for netns {}: {source}", .path.display())]
pub struct NetnsError {
    pub step: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn fail(step: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> NetnsError {
    let path = path.to_path_buf();
    move |errno| NetnsError {
        step,
        path,
        source: io::Error::from(errno),
    }
}

/// Makes `dir` a shared mount point, as iproute2 does for /run/netns, so pins made later
/// show up in mount namespaces created after this (containers, `ip netns exec`).
pub fn prepare_dir(dir: &Path) -> Result<(), NetnsError> {
    std::fs::create_dir_all(dir).map_err(|source| NetnsError {
        step: "create the netns dir",
        path: dir.to_path_buf(),
        source,
    })?;
    let share = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if share().is_ok() {
        return Ok(());
    }
    // Not yet a mount point: bind it onto itself first.
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind-mount the netns dir onto itself", dir))?;
    share().map_err(fail("make the netns dir a shared mount", dir))
}

/// Pins the network namespace of process `pid` at `<dir>/<id>` and returns the path.
pub fn pin(dir: &Path, id: &str, pid: u32) -> Result<PathBuf, NetnsError> {
    let path = dir.join(id);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| NetnsError {
            step: "create the pin file",
            path: path.clone(),
            source,
        })?;
    let source = format!("/proc/{pid}/ns/net");
    if let Err(errno) = mount(
        Some(source.as_str()),
        &path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(&path);
        return Err(fail("bind-mount the pause process's netns", &path)(errno));
    }
    Ok(path)
}

/// Creates a new, empty network namespace pinned at `path` (what `ip netns add` does, at a
/// path of our choosing). The lab's nodes and the tests' namespaces are made this way.
pub fn create(path: &Path) -> Result<(), NetnsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| NetnsError {
            step: "create the pin file",
            path: path.to_path_buf(),
            source,
        })?;
    // unshare(CLONE_NEWNET) moves only the calling thread, so a short-lived thread makes the
    // namespace and the bind mount keeps it after the thread is gone.
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(fail("unshare a new network namespace", &target))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail("bind-mount the new netns", &target))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError {
            step: "create a new netns (thread panicked)",
            path: path.to_path_buf(),
            source: io::Error::other("thread panicked"),
        })
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Runs `f` in the network namespace at `netns` (None: the caller's, directly). The calling
/// thread enters it for the call and goes back before returning (even if `f` panics):
/// two setns(2) calls, where a thread of its own would cost a clone and a join on every
/// socket a CNI plugin opens. What `f` opens there (sockets, /proc/sys/net files) stays
/// bound to that namespace.
pub fn run_in<T>(netns: Option<&Path>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some(netns) = netns else {
        return f();
    };
    let target = std::fs::File::open(netns)?;
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    nix::sched::setns(&target, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let _home = GoBack(home);
    f()
}

/// Takes the thread back to its own network namespace when dropped.
struct GoBack(std::fs::File);

impl Drop for GoBack {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.0, CloneFlags::CLONE_NEWNET) {
            // A thread left in a pod's namespace would open the node's sockets there:
            // there is no safe way on.
            eprintln!("sandboxd: cannot return a thread to its network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Runs `future` to completion on a single-threaded runtime of its own, on a thread that
/// entered the network namespace at `netns`: every socket it opens (a store client's, a
/// listener's) is opened there, whichever namespace the caller is in.
pub fn block_on_in<T: Send + 'static>(
    netns: &Path,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> io::Result<T> {
    let file = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(future))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(io::Error::other(
            "the thread in the network namespace panicked",
        ))
    })
}

/// Unmounts the netns dir itself (see [`prepare_dir`]) if no pin is left in it.
pub fn release_dir(dir: &Path) -> Result<(), NetnsError> {
    let empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !empty {
        return Ok(());
    }
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(errno) => Err(fail("unmount the netns dir", dir)(errno)),
    }
}

/// Whether `path` is a pinned namespace (a bind mount of an nsfs file), not just a file.
pub fn is_pinned(path: &Path) -> bool {
    const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type().0 as libc::c_long == NSFS_MAGIC)
}

/// Unpins a namespace; an already-removed pin is not an error.
pub fn unpin(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(errno) => return Err(fail("unmount", path)(errno)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError {
            step: "remove the pin file",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn own_netns() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    /// Needs root (it makes a namespace), as the crate's other kernel tests do.
    #[test]
    fn run_in_enters_the_namespace_and_always_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = dir.path().join("ns");
        create(&pinned).unwrap();
        let theirs = std::fs::metadata(&pinned).unwrap().ino();
        let ours = own_netns();
        assert_ne!(ours, theirs);

        assert_eq!(run_in(Some(&pinned), || Ok(own_netns())).unwrap(), theirs);
        assert_eq!(own_netns(), ours, "back after the call");
        let panicked = std::panic::catch_unwind(|| {
            let _ = run_in(Some(&pinned), || -> io::Result<()> { panic!("in the pod") });
        });
        assert!(panicked.is_err());
        assert_eq!(own_netns(), ours, "back after a panic");
        assert_eq!(run_in(None, || Ok(own_netns())).unwrap(), ours);
        unpin(&pinned).unwrap();
    }
}
