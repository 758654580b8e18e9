//! The `tessera` command.
//!
//! Today it only reports its version and what exists; `tessera dev`, the
//! object commands and the operator commands (`status`, `scrub`, `repair`)
//! arrive with the gateway and healer issues.

use std::process::ExitCode;

const USAGE: &str = "tessera — Tessera's command line

USAGE:
    tessera --version

Built so far: the storage engine (crate tessera-engine). Its side-by-side
benchmark against fio runs with:
    cargo run --release -p tessera-bench -- engine
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("tessera {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None | Some("--help") | Some("-h") | Some("help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("tessera: unknown command `{other}`; run `tessera --help` for what exists.");
            ExitCode::from(2)
        }
    }
}
