//! `vigil-fuzz`: the command line of the fuzzer (run by `scripts/fuzz`).
//!
//!   vigil-fuzz --list
//!   vigil-fuzz TARGET SECONDS [--seeds DIR]... [--corpus DIR] [--crashes DIR] [--seed N]
//!   vigil-fuzz TARGET --replay FILE...

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vigil_fuzz::{engine, instrumented, targets};

fn usage() -> ExitCode {
    eprintln!(
        "usage: vigil-fuzz --list | TARGET SECONDS [--seeds DIR]... [--corpus DIR] [--crashes DIR] [--seed N] | TARGET --replay FILE..."
    );
    ExitCode::from(2)
}

fn files_in(dir: &PathBuf) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .map(|mut d| {
            d.truncate(engine::MAX_INPUT);
            d
        })
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for t in targets::TARGETS {
            println!("{}", t.name);
        }
        return ExitCode::SUCCESS;
    }
    let Some(target) = args.first().and_then(|n| targets::target(n)) else {
        eprintln!(
            "vigil-fuzz: error: unknown target {:?} (try --list)",
            args.first().map_or("", String::as_str)
        );
        return usage();
    };
    if args.get(1).map(String::as_str) == Some("--replay") {
        for f in &args[2..] {
            let data = match std::fs::read(f) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("vigil-fuzz: error: {f}: {e}");
                    return ExitCode::from(2);
                }
            };
            engine::run_one(target.run, &data);
            println!("{}: {f}: no crash", target.name);
        }
        return ExitCode::SUCCESS;
    }
    let Some(secs) = args.get(1).and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("vigil-fuzz: error: SECONDS must be a number");
        return usage();
    };
    let mut seeds = (target.seeds)();
    let mut corpus = None;
    let mut crashes = PathBuf::from("fuzz-crashes");
    let mut seed = 0x5eed_f022;
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        let Some(v) = rest.next() else {
            eprintln!("vigil-fuzz: error: {a} needs a value");
            return usage();
        };
        match a.as_str() {
            "--seeds" => seeds.extend(files_in(&PathBuf::from(v))),
            "--corpus" => {
                let dir = PathBuf::from(v);
                seeds.extend(files_in(&dir));
                corpus = Some(dir);
            }
            "--crashes" => crashes = PathBuf::from(v),
            "--seed" => match v.parse() {
                Ok(s) => seed = s,
                Err(_) => {
                    eprintln!("vigil-fuzz: error: --seed {v}: not a number");
                    return usage();
                }
            },
            _ => {
                eprintln!("vigil-fuzz: error: unknown option {a}");
                return usage();
            }
        }
    }
    if !instrumented() {
        eprintln!(
            "vigil-fuzz: warning: built without coverage instrumentation (use scripts/fuzz); mutating blindly"
        );
    }
    engine::save_crashes_to(crashes, target.name);
    let r = engine::fuzz(
        target.run,
        seeds,
        Duration::from_secs(secs),
        seed,
        corpus.as_deref(),
    );
    println!(
        "fuzz: {}: {} s, {} execs ({}/s), corpus {}, {} coverage features, no crash",
        target.name,
        secs,
        r.execs,
        r.execs / secs.max(1),
        r.corpus,
        r.features
    );
    ExitCode::SUCCESS
}
