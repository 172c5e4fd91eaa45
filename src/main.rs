//! The `concord` binary: every command, agent included, starts in `cli`.

fn main() -> std::process::ExitCode {
    concord::cli::main()
}
