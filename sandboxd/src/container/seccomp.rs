//! Seccomp profiles of containers, as the CRI names them: unconfined, the runtime's default
//! (`RuntimeDefault`, and its old names `runtime/default` and `docker/default`), or a
//! profile file on the node (`localhost/<absolute path>`, or the `seccomp` field's
//! `localhost_ref`).
//!
//! The default profile is containerd's (1.6): everything a process ordinarily needs is
//! allowed, and any other syscall fails with EPERM; the syscalls a capability guards are
//! allowed only when the container's bounding set holds it; without CAP_SYS_ADMIN, clone
//! may not create namespaces and clone3 (whose flags a filter cannot read) fails with
//! ENOSYS so that libcs fall back to clone. A privileged container runs unconfined, as
//! with containerd, whatever profile it names.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder,
};

use crate::container::security::capability;

/// The profile a container's security context names.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum SeccompProfile {
    #[default]
    Unconfined,
    RuntimeDefault,
    /// A profile from a file on the node, read when the container is created.
    Localhost {
        path: PathBuf,
        profile: LinuxSeccomp,
    },
}

/// A CRI seccomp setting that cannot be used: the field it came from and why.
#[derive(Debug)]
pub struct ProfileError {
    pub field: &'static str,
    pub reason: String,
}

impl SeccompProfile {
    /// The profile of a container's security context: the `seccomp` field when given,
    /// else the deprecated `seccomp_profile_path` (which critest and kubelets before 1.25
    /// send); neither is unconfined, as with containerd.
    #[allow(deprecated)]
    pub fn from_cri(
        security: &cri::LinuxContainerSecurityContext,
    ) -> Result<SeccompProfile, ProfileError> {
        if let Some(profile) = &security.seccomp {
            let field = "linux.security_context.seccomp.localhost_ref";
            return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
                Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                    Ok(SeccompProfile::RuntimeDefault)
                }
                Ok(cri::security_profile::ProfileType::Unconfined) => {
                    Ok(SeccompProfile::Unconfined)
                }
                Ok(cri::security_profile::ProfileType::Localhost) => {
                    Self::localhost(&profile.localhost_ref, field)
                }
                Err(_) => Err(ProfileError {
                    field: "linux.security_context.seccomp.profile_type",
                    reason: format!("{} is not a profile type", profile.profile_type),
                }),
            };
        }
        let field = "linux.security_context.seccomp_profile_path";
        match security.seccomp_profile_path.as_str() {
            "" | "unconfined" => Ok(SeccompProfile::Unconfined),
            "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
            path => match path.strip_prefix("localhost/") {
                Some(file) => Self::localhost(file, field),
                None => Err(ProfileError {
                    field,
                    reason: format!(
                        "{path:?} is not unconfined, runtime/default, docker/default or localhost/<path>"
                    ),
                }),
            },
        }
    }

    fn localhost(file: &str, field: &'static str) -> Result<SeccompProfile, ProfileError> {
        let error = |reason: String| ProfileError { field, reason };
        let path = Path::new(file);
        if !path.is_absolute() {
            return Err(error(format!("{file:?} is not an absolute path")));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(format!("cannot read the profile {file}: {e}")))?;
        let profile = serde_json::from_str(&text)
            .map_err(|e| error(format!("{file} is not a seccomp profile: {e}")))?;
        Ok(SeccompProfile::Localhost {
            path: path.to_path_buf(),
            profile,
        })
    }

    /// The filter for the OCI spec of a container whose bounding set is `capabilities`.
    pub fn filter(
        &self,
        capabilities: &HashSet<Capability>,
    ) -> anyhow::Result<Option<LinuxSeccomp>> {
        match self {
            SeccompProfile::Unconfined => Ok(None),
            SeccompProfile::Localhost { profile, .. } => Ok(Some(profile.clone())),
            SeccompProfile::RuntimeDefault => runtime_default(capabilities).map(Some),
        }
    }
}

/// Allowed to every container (ptrace too: containerd allows it on kernels from 4.8).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "_llseek", "_newselect", "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat",
    "get_robust_list", "get_thread_area", "getcpu", "getcwd", "getdents", "getdents64",
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "io_setup", "io_submit", "io_uring_enter", "io_uring_register",
    "io_uring_setup", "ioctl", "ioprio_get", "ioprio_set", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr",
    "link", "linkat", "listen", "listxattr", "llistxattr", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "ptrace", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_robust_list",
    "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
    "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority",
    "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid",
    "setreuid32", "setrlimit", "setsid", "setsockopt", "setuid", "setuid32", "setxattr", "shmat",
    "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4",
    "sigprocmask", "sigreturn", "socket", "socketcall", "socketpair", "splice", "stat", "stat64",
    "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid",
    "waitpid", "write", "writev",
];

/// Allowed only with a capability in the container's bounding set.
#[rustfmt::skip]
const ALLOWED_WITH: &[(&str, &[&str])] = &[
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("SYS_ADMIN", &["bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare"]),
    ("SYS_BOOT", &["reboot"]),
    ("SYS_CHROOT", &["chroot"]),
    ("SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("SYS_PACCT", &["acct"]),
    ("SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("SYS_RAWIO", &["iopl", "ioperm"]),
    ("SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    ("SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy"]),
    ("SYSLOG", &["syslog"]),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
];

/// x86-64 only: its legacy entry points.
const ALLOWED_X86_64: &[&str] = &["arch_prctl", "modify_ldt"];

/// personality(2) arguments allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and the query (0xffffffff).
const PERSONAS: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// clone(2) flags that create namespaces.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The default profile for a container whose bounding set is `capabilities`.
pub fn runtime_default(capabilities: &HashSet<Capability>) -> anyhow::Result<LinuxSeccomp> {
    let allow = |list: Vec<String>| {
        LinuxSyscallBuilder::default()
            .names(list)
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()
    };
    let mut syscalls = vec![allow(names(ALLOWED))?, allow(names(ALLOWED_X86_64))?];
    for persona in PERSONAS {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(names(&["personality"]))
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(*persona)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()?])
                .build()?,
        );
    }
    for (name, list) in ALLOWED_WITH {
        let cap = capability(name).with_context(|| format!("{name} is a capability"))?;
        if capabilities.contains(&cap) {
            syscalls.push(allow(names(list))?);
        }
    }
    let admin = capability("SYS_ADMIN").context("SYS_ADMIN is a capability")?;
    if !capabilities.contains(&admin) {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(names(&["clone"]))
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(NAMESPACE_FLAGS)
                    .value_two(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?])
                .build()?,
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(names(&["clone3"]))
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()?,
        );
    }
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(syscalls)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &LinuxSeccomp, name: &str) -> bool {
        profile.syscalls().as_ref().unwrap().iter().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().as_ref().is_none_or(|a| a.is_empty())
                && s.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn the_default_profile_follows_the_bounding_set() {
        let plain = runtime_default(&HashSet::new()).unwrap();
        assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
        for name in ["read", "execve", "ptrace", "arch_prctl", "chmod"] {
            assert!(allowed(&plain, name), "{name}");
        }
        for name in [
            "sethostname",
            "mount",
            "unshare",
            "clone",
            "reboot",
            "keyctl",
        ] {
            assert!(!allowed(&plain, name), "{name}");
        }
        let clone3 = plain
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names().contains(&"clone3".to_string()))
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));

        let admin: HashSet<_> = ["SYS_ADMIN", "SYS_TIME"]
            .iter()
            .map(|c| capability(c).unwrap())
            .collect();
        let with_admin = runtime_default(&admin).unwrap();
        for name in [
            "sethostname",
            "mount",
            "unshare",
            "clone",
            "clone3",
            "settimeofday",
        ] {
            assert!(allowed(&with_admin, name), "{name}");
        }
        assert!(!allowed(&with_admin, "reboot"));
        assert!(ALLOWED_WITH
            .iter()
            .all(|(cap, _)| capability(cap).is_some()));
    }

    #[allow(deprecated)]
    fn from_path(path: &str) -> Result<SeccompProfile, ProfileError> {
        SeccompProfile::from_cri(&cri::LinuxContainerSecurityContext {
            seccomp_profile_path: path.into(),
            ..Default::default()
        })
    }

    #[test]
    fn profiles_are_named_as_the_cri_names_them() {
        assert_eq!(from_path("").unwrap(), SeccompProfile::Unconfined);
        assert_eq!(from_path("unconfined").unwrap(), SeccompProfile::Unconfined);
        assert_eq!(
            from_path("docker/default").unwrap(),
            SeccompProfile::RuntimeDefault
        );
        assert_eq!(
            from_path("runtime/default").unwrap(),
            SeccompProfile::RuntimeDefault
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("block-chmod.json");
        std::fs::write(
            &file,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let SeccompProfile::Localhost { profile, .. } =
            from_path(&format!("localhost/{}", file.display())).unwrap()
        else {
            panic!("not a localhost profile")
        };
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        let bare = from_path(&file.display().to_string()).unwrap_err();
        assert_eq!(bare.field, "linux.security_context.seccomp_profile_path");
        assert!(from_path("localhost/relative.json")
            .unwrap_err()
            .reason
            .contains("absolute"));
        assert!(from_path("localhost//nonexistent/x.json")
            .unwrap_err()
            .reason
            .contains("cannot read"));
        std::fs::write(&file, "{").unwrap();
        let err = SeccompProfile::from_cri(&cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: file.display().to_string(),
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "linux.security_context.seccomp.localhost_ref");
        assert!(
            err.reason.contains("is not a seccomp profile"),
            "{}",
            err.reason
        );
    }
}
