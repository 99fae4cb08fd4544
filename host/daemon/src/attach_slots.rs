//! Where `vm attach` hot-plugs the Vesper device into a running QEMU: a free slot on
//! the root bus (pc's hot-pluggable pci.0; q35's pcie.0 refuses), then every empty PCI
//! bridge with an id (q35's pcie-root-ports). A slot is skipped while QEMU still holds
//! the RAM block of an ivshmem that was unplugged from it: QEMU 7.2 does not always free
//! an unplugged ivshmem-doorbell the guest used, and a device plugged where it was
//! aborts QEMU ("RAMBlock ... already registered").

use serde_json::Value;

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The bus (`device_add`'s `bus`): `None` for the root bus.
    pub(crate) bus: Option<String>,
    /// The slot on it (`addr`), for the root bus.
    pub(crate) addr: Option<String>,
    /// A bridge's prefetchable window, once firmware or the guest programmed it: the
    /// device's 64-bit BAR (the whole region) must fit in it.
    pub(crate) window: Option<u64>,
}

/// The device paths (`0000:00:04.0`, `0000:00:03.0:00.0`) of ivshmem RAM blocks QEMU
/// still holds, from HMP `info ramblock`.
pub(crate) fn stale_paths(info_ramblock: &str) -> Vec<String> {
    info_ramblock
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| name.strip_suffix("/ivshmem.bar2"))
        .map(str::to_string)
        .collect()
}

/// Whether a bridge slot has room for a BAR of `need` bytes: its programmed
/// prefetchable window, else what it asks firmware to reserve for hot-plug
/// (`pref64-reserve`/`pref32-reserve`, read with `reserve`); SeaBIOS's default
/// reservation (2 MiB) is too small for the Vesper region.
pub(crate) fn room(slot: &Slot, need: u64, mut reserve: impl FnMut(&str) -> Option<u64>) -> bool {
    if slot.bus.is_none() {
        return true;
    }
    if let Some(w) = slot.window {
        return w >= need;
    }
    ["pref64-reserve", "pref32-reserve"]
        .iter()
        .filter_map(|p| reserve(p))
        .any(|r| r != u64::MAX && r >= need)
}

/// The slots to try, in order, from `query-pci` and the stale device paths.
pub(crate) fn plan(query_pci: &Value, stale: &[String]) -> Vec<Slot> {
    let mut out = Vec::new();
    let root = query_pci
        .as_array()
        .and_then(|b| b.iter().find(|b| b["bus"] == 0))
        .and_then(|b| b["devices"].as_array().cloned())
        .unwrap_or_default();
    let used: Vec<u64> = root.iter().filter_map(|d| d["slot"].as_u64()).collect();
    if let Some(slot) =
        (1..32u64).find(|s| !used.contains(s) && !stale.contains(&format!("0000:00:{s:02x}.0")))
    {
        out.push(Slot {
            bus: None,
            addr: Some(format!("{slot:#x}")),
            window: None,
        });
    }
    walk(&root, "0000:00", stale, &mut out);
    out
}

/// Empty bridges with an id among `devices` (at device path `prefix`), depth first.
fn walk(devices: &[Value], prefix: &str, stale: &[String], out: &mut Vec<Slot>) {
    for d in devices {
        let Some(bridge) = d.get("pci_bridge") else {
            continue;
        };
        let path = format!(
            "{prefix}:{:02x}.{:x}",
            d["slot"].as_u64().unwrap_or(0),
            d["function"].as_u64().unwrap_or(0)
        );
        let behind = bridge["devices"].as_array().cloned().unwrap_or_default();
        match d["qdev_id"].as_str() {
            Some(id) if !id.is_empty() && behind.is_empty() => {
                if !stale.contains(&format!("{path}:00.0")) {
                    let r = &bridge["bus"]["prefetchable_range"];
                    let window = match (r["base"].as_u64(), r["limit"].as_u64()) {
                        // Reset registers (base 0) read as a 1 MiB window at 0.
                        (Some(b), Some(l)) if b > 0 && l > b => Some(l - b + 1),
                        _ => None,
                    };
                    out.push(Slot {
                        bus: Some(id.to_string()),
                        addr: None,
                        window,
                    });
                }
            }
            _ => walk(&behind, &path, stale, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn free_slots_come_first_and_stale_ones_are_skipped() {
        let pci = json!([{ "bus": 0, "devices": [
            { "slot": 0, "function": 0, "qdev_id": "" },
            { "slot": 1, "function": 0, "qdev_id": "" },
            { "slot": 3, "function": 0, "qdev_id": "rp1", "pci_bridge": { "devices": [],
              "bus": { "prefetchable_range": { "base": 4244635648u64, "limit": 4261412863u64 } } } },
            { "slot": 3, "function": 1, "qdev_id": "rp2", "pci_bridge": { "devices": [] } },
            { "slot": 4, "function": 0, "qdev_id": "full", "pci_bridge": { "devices": [ { "slot": 0 } ] } },
        ]}]);
        let slot = |bus: Option<&str>, addr: Option<&str>| Slot {
            bus: bus.map(str::to_string),
            addr: addr.map(str::to_string),
            window: None,
        };
        let rp1 = Slot {
            window: Some(16 << 20),
            ..slot(Some("rp1"), None)
        };
        assert_eq!(
            plan(&pci, &[]),
            vec![slot(None, Some("0x2")), rp1, slot(Some("rp2"), None)]
        );
        let stale = stale_paths(
            "  Block Name  PSize\n  pc.ram 4 KiB\n 0000:00:02.0/ivshmem.bar2 4 KiB\n 0000:00:03.0:00.0/ivshmem.bar2 4 KiB\n",
        );
        assert_eq!(stale, vec!["0000:00:02.0", "0000:00:03.0:00.0"]);
        let rp = |window| Slot {
            window,
            ..slot(Some("rp"), None)
        };
        assert!(room(&rp(Some(16 << 20)), 8 << 20, |_| None));
        assert!(!room(&rp(Some(2 << 20)), 8 << 20, |_| Some(1 << 30)));
        assert!(!room(&rp(None), 8 << 20, |_| Some(u64::MAX)));
        assert!(room(&rp(None), 8 << 20, |p| (p == "pref64-reserve")
            .then_some(16 << 20)));
        assert!(room(&slot(None, Some("0x2")), 8 << 20, |_| None));
        assert_eq!(
            plan(&pci, &stale),
            vec![slot(None, Some("0x5")), slot(Some("rp2"), None)]
        );
    }
}
