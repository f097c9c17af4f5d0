//! The pod's first process: it holds the pod's namespaces open and does nothing else.
//!
//! Behaviour follows Kubernetes' `build/pause/linux/pause.c`:
//! * blocks forever in `pause(2)`;
//! * on SIGCHLD reaps every exited child, so that as PID 1 of a shared pid namespace
//!   no zombie survives;
//! * exits 0 on SIGINT or SIGTERM;
//! * `-v` prints the version and exits 0;
//! * warns on stderr, and keeps running, when it is not PID 1.
//!
//! Why no libc and no std: the program must be a static binary of a few KiB built by a plain
//! `cargo build --release` for x86_64-unknown-linux-gnu. glibc's static startup code alone is
//! ~700 KiB, and Rust's std adds another ~300 KiB, so this file brings its own `_start`,
//! its own syscall wrappers and its own signal-return trampoline. `build.rs` compiles it
//! with `panic=abort`, which Cargo cannot set for one package of a workspace.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const VERSION: &str = env!("CARGO_PKG_VERSION");

const SYS_WRITE: usize = 1;
const SYS_RT_SIGACTION: usize = 13;
const SYS_RT_SIGRETURN: usize = 15;
const SYS_PAUSE: usize = 34;
const SYS_GETPID: usize = 39;
const SYS_WAIT4: usize = 61;
const SYS_EXIT_GROUP: usize = 231;

const SIGINT: usize = 2;
const SIGTERM: usize = 15;
const SIGCHLD: usize = 17;

const SA_NOCLDSTOP: u64 = 0x1;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_RESTART: u64 = 0x1000_0000;
const WNOHANG: usize = 1;

const STDOUT: usize = 1;
const STDERR: usize = 2;

// The kernel enters `_start` with the stack pointer at argc, followed by the argv pointers.
// A Rust function cannot see that frame, so a few instructions hand it over as the first
// argument and restore the 16-byte alignment the System V ABI promises at a call.
//
// `restore_rt` is the signal-return trampoline. Without libc nobody supplies one, and the
// x86_64 kernel refuses handlers that lack SA_RESTORER: when a handler returns, it returns
// here, and rt_sigreturn(2) restores the interrupted context.
global_asm!(
    ".globl _start",
    "_start:",
    "xor rbp, rbp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call pause_main",
    "ud2",
    ".globl restore_rt",
    "restore_rt:",
    "mov rax, {rt_sigreturn}",
    "syscall",
    rt_sigreturn = const SYS_RT_SIGRETURN,
);

extern "C" {
    fn restore_rt();
}

/// `struct sigaction` as the x86_64 kernel reads it (not libc's layout).
#[repr(C)]
struct KernelSigaction {
    handler: extern "C" fn(i32),
    flags: u64,
    restorer: unsafe extern "C" fn(),
    mask: u64,
}

/// One raw system call with up to four arguments; every wrapper below goes through it.
///
/// # Safety
/// The caller passes arguments that are valid for syscall `nr`.
#[inline(always)]
unsafe fn syscall4(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    asm!(
        "syscall",
        inlateout("rax") nr as isize => ret,
        in("rdi") a1,
        in("rsi") a2,
        in("rdx") a3,
        in("r10") a4,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

fn write(fd: usize, bytes: &[u8]) {
    // A short or failed write to a closed stdio is not worth dying for.
    unsafe { syscall4(SYS_WRITE, fd, bytes.as_ptr() as usize, bytes.len(), 0) };
}

fn exit(code: usize) -> ! {
    unsafe { syscall4(SYS_EXIT_GROUP, code, 0, 0, 0) };
    loop {}
}

fn getpid() -> isize {
    unsafe { syscall4(SYS_GETPID, 0, 0, 0, 0) }
}

/// Sleeps until a signal handler has run.
fn pause() {
    unsafe { syscall4(SYS_PAUSE, 0, 0, 0, 0) };
}

/// `waitpid(-1, NULL, WNOHANG)`: the pid of one exited child, 0 if none has exited, <0 if
/// there are no children.
fn reap_one() -> isize {
    unsafe { syscall4(SYS_WAIT4, -1isize as usize, 0, WNOHANG, 0) }
}

fn install_handler(signal: usize, handler: extern "C" fn(i32), flags: u64) {
    let action = KernelSigaction {
        handler,
        flags: flags | SA_RESTORER,
        restorer: restore_rt,
        mask: 0,
    };
    let ret = unsafe {
        syscall4(
            SYS_RT_SIGACTION,
            signal,
            &action as *const KernelSigaction as usize,
            0,
            core::mem::size_of::<u64>(),
        )
    };
    if ret < 0 {
        write(STDERR, b"pause: rt_sigaction failed\n");
        exit(1);
    }
}

extern "C" fn on_shutdown(_signal: i32) {
    exit(0);
}

extern "C" fn on_child_exit(_signal: i32) {
    // One SIGCHLD may stand for many exits: signals of one kind do not queue.
    while reap_one() > 0 {}
}

/// `argv[1] == "-v"`, read straight from the initial stack.
///
/// # Safety
/// `stack` is the stack pointer the kernel gave `_start`.
unsafe fn asked_for_version(stack: *const usize) -> bool {
    let argc = *stack;
    if argc < 2 {
        return false;
    }
    let arg = *stack.add(2) as *const u8;
    *arg == b'-' && *arg.add(1) == b'v' && *arg.add(2) == 0
}

#[no_mangle]
unsafe extern "C" fn pause_main(stack: *const usize) -> ! {
    if asked_for_version(stack) {
        write(STDOUT, b"pause.rs ");
        write(STDOUT, VERSION.as_bytes());
        write(STDOUT, b"\n");
        exit(0);
    }
    if getpid() != 1 {
        write(
            STDERR,
            b"pause: warning: not running as PID 1, zombies of the pod will not be reaped here\n",
        );
    }
    install_handler(SIGINT, on_shutdown, 0);
    install_handler(SIGTERM, on_shutdown, 0);
    install_handler(SIGCHLD, on_child_exit, SA_NOCLDSTOP | SA_RESTART);
    loop {
        pause();
    }
}

#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo) -> ! {
    exit(2);
}
