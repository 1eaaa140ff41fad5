//! The `meterd` command line: `serve`, `check-config`, `emit`, `health`,
//! and the readers `tail` and `usage`.
//!
//! Every `serve` flag can also come from an environment variable
//! (`METERD_<FLAG>`) and from a TOML file (`--config`, keys named as the
//! flags); precedence is flag > environment > file > default.
//!
//! Here: the subcommands and what they share (`--listen`'s default, sizes,
//! the default ledger directory); `serve_args.rs` holds the `serve` flags,
//! each other subcommand's file its flags beside its implementation.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod client;
mod config;
mod serve;
mod serve_args;
pub mod tail;
pub mod usage;
mod usage_output;
pub mod verify;

pub use client::{EmitArgs, HealthArgs};
pub use config::{effective_config, parse_from};
pub use serve::{check, serve};
pub use serve_args::{LogFormat, ServeArgs};

/// Default gRPC address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

#[derive(Debug, Parser)]
#[command(
    name = "meterd",
    version,
    about = "gRPC metering service: durable, Go-compatible JSONL ledger of VM lifecycle entries and metric batches"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print the effective configuration (secrets redacted) and check it; exits non-zero on any invalid value.
    CheckConfig(Box<ServeArgs>),
    /// Record one entry (for shell hooks); exits non-zero with the server's message when rejected.
    Emit(EmitArgs),
    /// Probe a server's health; exits 0 when it is SERVING.
    Health(HealthArgs),
    /// Billable usage over a time range, from a server (--addr) or a ledger directory (--ledger).
    Usage(usage::UsageArgs),
    /// Print one stream of the ledger from a position, optionally following it.
    Tail(tail::TailArgs),
    /// Check a ledger directory against its seals and checksums; exits 0 only when everything holds.
    Verify(verify::VerifyArgs),
}

/// Parses a byte count: plain bytes (`4294967296`) or with a unit (`4GiB`,
/// `512MiB`, `10GB`).
pub fn parse_size(s: &str) -> Result<i64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a size such as 4GiB: {e}"))?;
    i64::try_from(size.as_u64()).map_err(|_| format!("{s:?} is too large"))
}

/// The ledger directory when `--ledger` is not given.
pub fn default_ledger_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("STATE_DIRECTORY") {
        // systemd's StateDirectory= may list several, separated by ':'.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first);
    }
    if let Some(dir) = env("XDG_STATE_HOME") {
        return dir.join("meterd");
    }
    if let Some(home) = env("HOME") {
        return home.join(".local/state/meterd");
    }
    PathBuf::from("meterd-ledger")
}

/// Parses the process's own command line (with environment and config file).
pub fn parse() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os().collect::<Vec<OsString>>())
}
