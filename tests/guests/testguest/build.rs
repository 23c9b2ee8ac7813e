use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let script = dir.join("../../../linker/guest.ld").canonicalize().unwrap();
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("TARGET").unwrap() == "aarch64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
