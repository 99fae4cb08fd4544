//! Shared by the guest test files.

/// True when /dev/kvm can be opened; otherwise says loudly why `test` is skipped.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("!!! SKIPPING {test}: cannot open /dev/kvm ({e}) — needs KVM access");
            false
        }
    }
}
