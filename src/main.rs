//! The `meterd` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use meterd::cli::{self, Command, LogFormat};

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }

    let result = match cli.command {
        Command::Serve(args) => cli::serve(*args).await.map_err(|e| e.to_string()),
        Command::CheckConfig(args) => cli::check(&args).map(|toml| print!("{toml}")),
        Command::Emit(args) => cli::client::emit(args).await,
        Command::Health(args) => cli::client::health(args).await,
        Command::Usage(args) => cli::usage::usage(args).await,
        Command::Tail(args) => cli::tail::tail(args).await,
        Command::Verify(args) => cli::verify::verify(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meterd: {e}");
            ExitCode::FAILURE
        }
    }
}
