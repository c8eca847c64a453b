use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = infrakit::cli::Cli::parse();
    // The daemon logs what it does; a one-shot command only what went wrong.
    let default = match cli.command {
        infrakit::cli::Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_env("INFRAKIT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        infrakit::cli::LogFormat::Json => logs.json().init(),
        infrakit::cli::LogFormat::Human => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(infrakit::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<infrakit::cli::Unreachable>().is_some() {
                ExitCode::from(infrakit::cli::EXIT_UNREACHABLE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
