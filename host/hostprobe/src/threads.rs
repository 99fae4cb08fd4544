//! Finding a QEMU process's vCPU threads: QEMU names them `CPU n/KVM` (or `/TCG`, `/HVF`).

use std::path::Path;

/// `(vcpu index, accelerator)` from a thread's comm `CPU 3/KVM`.
pub fn parse_vcpu_comm(comm: &str) -> Option<(u32, &str)> {
    let rest = comm.trim_end().strip_prefix("CPU ")?;
    let (index, accel) = rest.split_once('/')?;
    Some((index.parse().ok()?, accel))
}

/// The vCPU threads of process `pid` as `(vcpu index, thread id)`, sorted by index;
/// empty when the process is gone.
pub fn qemu_vcpus(pid: u32) -> Vec<(u32, u32)> {
    vcpus_under(&Path::new("/proc").join(pid.to_string()).join("task"))
}

fn vcpus_under(task_dir: &Path) -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir(task_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            parse_vcpu_comm(&comm).map(|(i, _)| (i, tid))
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_thread_names_give_the_index() {
        assert_eq!(parse_vcpu_comm("CPU 0/KVM\n"), Some((0, "KVM")));
        assert_eq!(parse_vcpu_comm("CPU 12/TCG"), Some((12, "TCG")));
        assert_eq!(parse_vcpu_comm("qemu-system-x86"), None);
        assert_eq!(parse_vcpu_comm("CPU x/KVM"), None);
        assert_eq!(parse_vcpu_comm("IO mon_iothread"), None);
    }

    #[test]
    fn a_fake_proc_task_dir_lists_only_vcpus() {
        let dir = std::env::temp_dir().join(format!("hostprobe-task-{}", std::process::id()));
        for (tid, comm) in [
            (10, "qemu-system-x86\n"),
            (12, "CPU 1/KVM\n"),
            (11, "CPU 0/KVM\n"),
        ] {
            std::fs::create_dir_all(dir.join(tid.to_string())).unwrap();
            std::fs::write(dir.join(tid.to_string()).join("comm"), comm).unwrap();
        }
        assert_eq!(vcpus_under(&dir), vec![(0, 11), (1, 12)]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(vcpus_under(&dir).is_empty());
    }
}
