//! The pause binary, built from `src/pause.rs` by `build.rs`.
//!
//! The executable itself is `target/<profile>/pause`; this library only tells Rust code of
//! the workspace (tests, benchmarks, the demo) where the build put it and which version it is.

/// Path of the pause executable produced by this build (inside Cargo's OUT_DIR).
pub const BUILT_BINARY: &str = env!("PAUSE_BINARY");

/// The version `pause -v` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
