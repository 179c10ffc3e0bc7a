//! The `ftsurvey` command line, built inside the tests package so the e2e tests can run it.

fn main() -> std::process::ExitCode {
    cli::main()
}
