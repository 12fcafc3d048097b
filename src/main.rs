//! The `sessiongate` binary; everything is in the library.

fn main() -> std::process::ExitCode {
    sessiongate::cli::run()
}
