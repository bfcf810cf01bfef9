use clap::Parser;
use moescope::ui::Interrupted;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = moescope::commands::Cli::parse();
    match moescope::commands::main_with(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The TUI restores the terminal before its error reaches here.
        Err(err) => match err.downcast_ref::<Interrupted>() {
            // Ended by a signal: every finished step is on disk; the shell's usual status.
            Some(signal) => {
                eprintln!("moescope: {signal}");
                ExitCode::from(signal.exit_code())
            }
            None => {
                eprintln!("moescope: error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
