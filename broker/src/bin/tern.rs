//! The `tern` command. Until the broker lands it only explains that it is not there yet.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("{}", tern_broker::NOT_YET);
    std::process::ExitCode::from(2)
}
