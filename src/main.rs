//! The `runner` binary: everything lives in the library, see `runner::cli`.

fn main() -> std::process::ExitCode {
    runner::cli::main(std::env::args_os())
}
