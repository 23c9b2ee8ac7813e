//! Every target replays its seeds and the inputs that once crashed it
//! (`tests/fuzz/regressions/<target>/*.hex`, hex text so the tree holds no
//! binaries): a crash the fuzzer found stays fixed.

use std::path::Path;

use vigil_fuzz::targets::TARGETS;

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|b| (b as char).to_digit(16).unwrap() as u8)
        .collect();
    digits
        .chunks(2)
        .map(|p| p[0] << 4 | p.get(1).copied().unwrap_or(0))
        .collect()
}

#[test]
fn every_target_survives_its_seeds_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for t in TARGETS {
        let mut inputs = (t.seeds)();
        let dir = root.join(t.name);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "hex") {
                    inputs.push(hex(&std::fs::read_to_string(e.path()).unwrap()));
                }
            }
        }
        for i in &inputs {
            (t.run)(i);
        }
    }
}

#[test]
fn the_mutator_keeps_inputs_bounded() {
    let mut rng = vigil_fuzz::engine::Rng::new(7);
    let mut data = vec![0u8; 16];
    let other = vec![0xffu8; vigil_fuzz::engine::MAX_INPUT];
    for _ in 0..100_000 {
        vigil_fuzz::engine::mutate(&mut rng, &mut data, &other);
        assert!(data.len() <= vigil_fuzz::engine::MAX_INPUT);
    }
}
