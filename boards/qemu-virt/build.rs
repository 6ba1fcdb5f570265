//! Links with our own script (load address in qemu virt's RAM) and rebuilds when the embedded model
//! changes.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rustc-link-arg=-T{dir}/link.x");
    println!("cargo:rerun-if-changed={dir}/link.x");
    println!("cargo:rerun-if-env-changed=DMQ_MODEL");
    println!("cargo:rerun-if-env-changed=DMQ_SEED");
    println!("cargo:rerun-if-env-changed=DMQ_STEPS");
    println!("cargo:rerun-if-env-changed=DMQ_SAMPLER");
    if let Ok(m) = std::env::var("DMQ_MODEL") {
        println!("cargo:rerun-if-changed={m}");
    }
}
