//! The `--config` TOML file: merged under flags and environment, and printed
//! back by `meterd check-config`.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Args as _, CommandFactory, FromArgMatches};

use super::{Cli, ServeArgs};

/// Parses a command line. For `serve` and `check-config`, values from the
/// `--config` file fill in every flag that neither the command line nor the
/// environment set. Unknown keys and invalid values are errors.
pub fn parse_from(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    let Some((name, sub)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches);
    };
    if !matches!(name, "serve" | "check-config") {
        return Cli::from_arg_matches(&matches);
    }
    let Some(path) = sub.get_one::<std::path::PathBuf>("config") else {
        return Cli::from_arg_matches(&matches);
    };
    let extra = file_args(path, |id| {
        matches!(sub.value_source(id), None | Some(ValueSource::DefaultValue))
    })
    .map_err(|msg| {
        command
            .clone()
            .error(clap::error::ErrorKind::InvalidValue, msg)
    })?;
    let mut argv = argv;
    argv.extend(extra);
    let merged = command.clone().try_get_matches_from(&argv).map_err(|e| {
        let msg = format!("in config file {}: {}", path.display(), e.render());
        command
            .clone()
            .error(clap::error::ErrorKind::InvalidValue, msg.trim_end())
    })?;
    Cli::from_arg_matches(&merged)
}

/// Turns the file's keys into `--flag value` arguments, for the flags that
/// `unset(id)` says were not set by the command line or environment.
fn file_args(path: &Path, unset: impl Fn(&str) -> bool) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let serve = ServeArgs::augment_args(clap::Command::new("serve"));
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                format!(
                    "config file {}: unknown key {key:?} (keys are the serve flags without --, e.g. fsync, listen, max-in-flight)",
                    path.display()
                )
            })?;
        if !unset(arg.get_id().as_str()) {
            continue;
        }
        let flag = format!("--{long}");
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if is_switch => {
                    if b {
                        out.push(OsString::from(&flag));
                    }
                    continue;
                }
                other => {
                    return Err(format!(
                        "config file {}: key {key:?} has an unsupported value {other}",
                        path.display()
                    ))
                }
            };
            out.push(OsString::from(format!("{flag}={text}")));
        }
    }
    Ok(out)
}

/// The effective configuration as TOML (the same keys `--config` takes).
/// Nothing secret is in it: tokens and keys are referred to by path, and
/// passwords in sink URLs are redacted.
pub fn effective_config(args: &ServeArgs) -> Result<String, String> {
    toml::to_string(args).map_err(|e| e.to_string())
}
