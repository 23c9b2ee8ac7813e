//! The fuzzing loop: mutate an input of the corpus, run the target, keep
//! the input if it reached new coverage, stop at the time limit or at the
//! first crash (a panic: the panic hook saves the input first, since the
//! workspace's profiles abort on panic).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Inputs are at most this long.
pub const MAX_INPUT: usize = 4096;

/// The input being run, for the panic hook.
static CURRENT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// xorshift64*: the mutation schedule, reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Values that sit on the edges of fields.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 63,
    u64::MAX,
];

/// One mutation of `data` (`other`: another corpus input, for splicing).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    if data.is_empty() {
        data.push(rng.next_u64() as u8);
    }
    match rng.below(8) {
        0 => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(data.len());
            data[i] = rng.next_u64() as u8;
        }
        2 => {
            // An interesting value, 1, 2, 4 or 8 bytes wide.
            let w = 1 << rng.below(4);
            let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let i = rng.below(data.len());
            for (k, b) in v.iter().take(w).enumerate() {
                if let Some(d) = data.get_mut(i + k) {
                    *d = *b;
                }
            }
        }
        3 => {
            let i = rng.below(data.len() + 1);
            let n = 1 + rng.below(16);
            for _ in 0..n {
                data.insert(i.min(data.len()), rng.next_u64() as u8);
            }
        }
        4 if data.len() > 1 => {
            let i = rng.below(data.len());
            let n = (1 + rng.below(32)).min(data.len() - i);
            data.drain(i..i + n);
        }
        5 => {
            // Duplicate a range (repeats a command or an access).
            let i = rng.below(data.len());
            let n = (1 + rng.below(64)).min(data.len() - i);
            let chunk: Vec<u8> = data[i..i + n].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, chunk);
        }
        6 if !other.is_empty() => {
            // Splice: our head, the other's tail.
            let cut = rng.below(data.len());
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            // Add or subtract a little from a byte.
            let i = rng.below(data.len());
            data[i] = data[i].wrapping_add(rng.below(32) as u8).wrapping_sub(16);
        }
    }
    data.truncate(MAX_INPUT);
}

/// Features seen so far: for each counter, a bit per hit-count bucket.
struct Coverage {
    seen: Vec<Vec<u8>>,
}

fn bucket(c: u8) -> u8 {
    match c {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        _ => 128,
    }
}

impl Coverage {
    fn new() -> Self {
        Self {
            seen: crate::regions().map(|(_, len)| vec![0; len]).collect(),
        }
    }

    /// Fold the counters of the last run into what was seen (zeroing
    /// them); the number of new features.
    fn collect(&mut self) -> usize {
        let mut new = 0;
        for (k, (start, len)) in crate::regions().enumerate() {
            if k >= self.seen.len() {
                self.seen.push(vec![0; len]);
            }
            // SAFETY: `start..start + len` is a module's counter array as
            // LLVM registered it, alive for the whole process; only this
            // thread runs instrumented code while the engine reads it.
            let counters = unsafe { core::slice::from_raw_parts_mut(start as *mut u8, len) };
            for (c, s) in counters.iter_mut().zip(self.seen[k].iter_mut()) {
                if *c != 0 {
                    let b = bucket(*c);
                    if *s & b == 0 {
                        *s |= b;
                        new += 1;
                    }
                    *c = 0;
                }
            }
        }
        new
    }

    fn features(&self) -> usize {
        self.seen
            .iter()
            .flatten()
            .map(|s| s.count_ones() as usize)
            .sum()
    }
}

/// What a run of the engine found.
pub struct Report {
    pub execs: u64,
    pub corpus: usize,
    pub features: usize,
}

fn hash(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Install the hook that saves the input being run when a target panics
/// (into `crashes/<target>-<hash>`), then lets the process abort.
pub fn save_crashes_to(dir: PathBuf, target: &'static str) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let data = CURRENT.lock().map(|d| d.clone()).unwrap_or_default();
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{target}-{:016x}", hash(&data)));
        match std::fs::write(&path, &data) {
            Ok(()) => eprintln!(
                "fuzz: {target}: CRASH; input saved to {} ({} bytes); replay with: vigil-fuzz {target} --replay {}",
                path.display(),
                data.len(),
                path.display()
            ),
            Err(e) => eprintln!("fuzz: {target}: CRASH; could not save the input: {e}"),
        }
        default(info);
    }));
}

/// Run `target` on `data` as the engine does (recording it for the hook).
pub fn run_one(target: fn(&[u8]), data: &[u8]) {
    if let Ok(mut c) = CURRENT.lock() {
        c.clear();
        c.extend_from_slice(data);
    }
    target(data);
}

/// Fuzz `target` for `time`, starting from `seeds`, keeping the inputs
/// that reach new coverage in `corpus_dir` (if given).
pub fn fuzz(
    target: fn(&[u8]),
    seeds: Vec<Vec<u8>>,
    time: Duration,
    seed: u64,
    corpus_dir: Option<&Path>,
) -> Report {
    let mut rng = Rng::new(seed);
    let mut cov = Coverage::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for s in seeds {
        run_one(target, &s);
        cov.collect();
        corpus.push(s);
    }
    if corpus.is_empty() {
        corpus.push(vec![0; 16]);
    }
    let start = Instant::now();
    let mut execs = 0u64;
    let mut last_report = start;
    while start.elapsed() < time {
        let pick = rng.below(corpus.len());
        let other = rng.below(corpus.len());
        let mut data = corpus[pick].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut data, &corpus[other]);
        }
        run_one(target, &data);
        execs += 1;
        if cov.collect() > 0 {
            if let Some(dir) = corpus_dir {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join(format!("{:016x}", hash(&data))), &data);
            }
            corpus.push(data);
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "fuzz: {:>4} s: {execs} execs, corpus {}, {} features",
                start.elapsed().as_secs(),
                corpus.len(),
                cov.features()
            );
        }
    }
    Report {
        execs,
        corpus: corpus.len(),
        features: cov.features(),
    }
}
