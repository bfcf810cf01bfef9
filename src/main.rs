use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = moescope::commands::Cli::parse();
    match moescope::commands::main_with(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The TUI restores the terminal before its error reaches here.
            eprintln!("moescope: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
