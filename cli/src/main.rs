//! `ftsurvey`: surveys Python packages on free-threaded CPython.

fn main() -> std::process::ExitCode {
    cli::main()
}
