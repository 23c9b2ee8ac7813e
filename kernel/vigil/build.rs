use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let script = dir.join("../../linker/vigil.ld").canonicalize().unwrap();
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("TARGET")
        .unwrap()
        .starts_with("aarch64-unknown-none")
    {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
    println!("cargo:rerun-if-env-changed=VIGIL_LOG");
}
