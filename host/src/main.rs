use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Exit status of a command whose reader went away (`infrakit group describe web | head -3`):
/// what a shell reports for a process killed by SIGPIPE, which is how other CLIs end there.
const EXIT_BROKEN_PIPE: i32 = 141;

/// Rust ignores SIGPIPE, so printing to a closed pipe fails and `println!` panics with a
/// backtrace. A reader that has seen enough is not an error: end quietly.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") && message.starts_with("failed printing to std") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
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
