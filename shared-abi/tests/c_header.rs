//! The committed C header must be exactly what the Rust definitions generate.

#[test]
fn committed_c_header_is_current() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-module/include/vesper_abi.h"
    );
    let committed = std::fs::read_to_string(path).expect("read guest-module/include/vesper_abi.h");
    let generated = vesper_shared_abi::c_header();
    assert!(
        committed == generated,
        "guest-module/include/vesper_abi.h is stale: run `cargo run -p vesper-abi-header` and commit it"
    );
}
