//! `wharf config check [--connect]`: exit 0 only when start-up would accept
//! it all (and, with `--connect`, PostgreSQL and the bucket let this node
//! in).

use std::path::Path;
use std::process::ExitCode;

pub fn run(file: Option<&Path>, connect: bool) -> ExitCode {
    let cfg = match super::load_config(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut problems = crate::app::check::problems(&cfg);
    print!("{}", crate::app::check::redacted(&cfg));
    for said in crate::app::check::settings(&cfg) {
        eprintln!("wharf config check: {said}");
    }
    for p in &problems {
        eprintln!("wharf config check: {p}");
    }
    if connect {
        let reached = match super::runtime() {
            Some(rt) => rt.block_on(crate::app::check::connect(&cfg)),
            None => return ExitCode::FAILURE,
        };
        if reached.is_empty() {
            eprintln!("wharf config check: --connect: nothing to connect to (redb and the data folder are local)");
        }
        for r in reached {
            match r.answer {
                Ok(seen) => eprintln!("wharf config check: {}: {seen}", r.service),
                Err(refused) => {
                    eprintln!("wharf config check: {}: {refused}", r.service);
                    problems.push(refused);
                }
            }
        }
    }
    match problems.is_empty() {
        true => {
            eprintln!("wharf config check: ok");
            ExitCode::SUCCESS
        }
        false => ExitCode::from(1),
    }
}
