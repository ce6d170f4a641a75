//! `cargo xtask`: the project's chores, written in Rust instead of loose shell scripts.
//!
//! Each task is a module with `pub fn run(args: &[String]) -> anyhow::Result<()>`, where
//! `args` are the arguments after the task's name.

mod bench;
mod demo;
mod dist;
mod docs;
mod workspace;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <TASK>

Tasks:
  demo          build handover and the example worker, and run examples/demo.toml
  bench reload  measure reloads under load (see docs/benchmarks.md)
  bench idle    measure handover while idle
  dist          build target/dist/handover-VERSION-TARGET.tar.gz and the .deb
  man           write man pages to target/man
  completions   write bash, zsh and fish completions to target/completions";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("", &[][..]),
    };
    let result = match task {
        "demo" => demo::run(rest),
        "bench" => bench::run(rest),
        "dist" => dist::run(rest),
        "man" => docs::run_man(rest),
        "completions" => docs::run_completions(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask {task}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
