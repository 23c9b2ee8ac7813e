use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let script = dir.join("../../../linker/guest.ld").canonicalize().unwrap();
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("TARGET").unwrap() == "aarch64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        // Where the image is linked: guest RAM + 512 KiB; another base for
        // VMs whose RAM sits at a fixed physical address (identity-mapped,
        // e.g. with PCIe passthrough).
        let base = std::env::var("VIGIL_GUEST_BASE").unwrap_or_else(|_| "0x40080000".into());
        println!("cargo:rustc-link-arg-bins=--defsym=__guest_base={base}");
    }
    println!("cargo:rerun-if-env-changed=VIGIL_GUEST_BASE");
}
