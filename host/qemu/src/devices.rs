//! A user's VM beyond the test guest: disks, networks and how it boots, as data, and
//! the QEMU options each becomes. Every value that lands inside a QEMU option string
//! is checked or escaped here, so a path or name cannot smuggle in another option.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A disk image's format, as QEMU names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// QEMU copy-on-write v2.
    Qcow2,
    /// A plain image.
    Raw,
}

impl DiskFormat {
    /// QEMU's name (`format=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }

    /// The format `qemu-img info` reports, if QEMU's virtio disk takes it here.
    pub fn from_qemu_name(name: &str) -> Option<Self> {
        match name {
            "qcow2" => Some(Self::Qcow2),
            "raw" => Some(Self::Raw),
            _ => None,
        }
    }
}

/// One virtio disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// The image file (absolute).
    pub path: PathBuf,
    /// Its format; `None`: as `qemu-img info` finds it when the VM starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Writes go to a temporary overlay; the image stays untouched (QEMU `snapshot=on`).
    #[serde(default)]
    pub snapshot: bool,
    /// Attach read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// A protocol of a user-network port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A host port forwarded into a user-network guest (QEMU `hostfwd=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Host address to listen on (`None`: all).
    pub host_addr: Option<std::net::Ipv4Addr>,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
}

impl std::str::FromStr for PortForward {
    type Err = String;

    /// QEMU's `hostfwd` form `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`, or
    /// the short `HOSTPORT:GUESTPORT` (TCP).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "bad port forward {s:?}: {why}; use tcp::2222-:22 (QEMU's hostfwd form) or 2222:22"
            )
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
        if let Some((h, g)) = s.split_once(':').filter(|_| !s.contains('-')) {
            return match (port(h), port(g)) {
                (Some(host_port), Some(guest_port)) => Ok(Self {
                    protocol: Protocol::Tcp,
                    host_addr: None,
                    host_port,
                    guest_port,
                }),
                _ => Err(bad("ports are 1-65535")),
            };
        }
        let (host, guest) = s.split_once('-').ok_or_else(|| bad("no '-'"))?;
        let mut h = host.splitn(3, ':');
        let (proto, addr, host_port) = match (h.next(), h.next(), h.next()) {
            (Some(p), Some(a), Some(port)) => (p, a, port),
            (Some(a), Some(port), None) => ("tcp", a, port),
            _ => return Err(bad("the host side is [tcp|udp]:[ADDR]:PORT")),
        };
        let protocol = match proto {
            "tcp" | "" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(bad(&format!("unknown protocol {other:?}"))),
        };
        let host_addr = match addr {
            "" => None,
            a => Some(
                a.parse()
                    .map_err(|_| bad("the host address is an IPv4 address"))?,
            ),
        };
        let guest_port = guest.rsplit_once(':').map_or(guest, |(_, p)| p).to_string();
        match (port(host_port), port(&guest_port)) {
            (Some(host_port), Some(guest_port)) => Ok(Self {
                protocol,
                host_addr,
                host_port,
                guest_port,
            }),
            _ => Err(bad("ports are 1-65535")),
        }
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let addr = self.host_addr.map(|a| a.to_string()).unwrap_or_default();
        write!(f, "{proto}:{addr}:{}-:{}", self.host_port, self.guest_port)
    }
}

impl Serialize for PortForward {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortForward {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a guest's virtio NIC reaches a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Net {
    /// QEMU's user-mode network (slirp): outgoing connections through the host, and
    /// the given host ports forwarded in.
    User {
        /// Forwards, e.g. ssh as `tcp::2222-:22`.
        #[serde(default)]
        forwards: Vec<PortForward>,
    },
    /// An existing tap device (made by the user, e.g. `ip tuntap add`).
    Tap {
        /// Its name.
        ifname: String,
    },
    /// A port on a host bridge, through `qemu-bridge-helper` (allowed in
    /// `/etc/qemu/bridge.conf`).
    Bridge {
        /// The bridge.
        bridge: String,
    },
}

impl std::str::FromStr for Net {
    type Err = String;

    /// `user[,hostfwd=RULE]...`, `tap=IFNAME` (or `tap,ifname=IFNAME`), `bridge=BR`
    /// (or `bridge,br=BR`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (kind, inline) = head
            .split_once('=')
            .map_or((head, None), |(k, v)| (k, Some(v)));
        let opts: Vec<(&str, &str)> = parts
            .map(|p| {
                p.split_once('=')
                    .ok_or_else(|| format!("bad network option {p:?} in {s:?}: use KEY=VALUE"))
            })
            .collect::<Result<_, _>>()?;
        let one = |key: &str| -> Result<String, String> {
            let v = inline
                .map(str::to_string)
                .or_else(|| {
                    opts.iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.to_string())
                })
                .ok_or_else(|| format!("network {s:?}: {kind} needs a name: {kind}=NAME"))?;
            if let Some((k, _)) = opts.iter().find(|(k, _)| *k != key) {
                return Err(format!("network {s:?}: {kind} takes no option {k:?}"));
            }
            check_ifname(&v)?;
            Ok(v)
        };
        match kind {
            "user" => {
                if inline.is_some() {
                    return Err(format!("network {s:?}: use user,hostfwd=RULE"));
                }
                let forwards = opts
                    .iter()
                    .map(|(k, v)| match *k {
                        "hostfwd" => v.parse(),
                        other => Err(format!("network {s:?}: user takes hostfwd=RULE, not {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Self::User { forwards })
            }
            "tap" => Ok(Self::Tap { ifname: one("ifname")? }),
            "bridge" => Ok(Self::Bridge { bridge: one("br")? }),
            other => Err(format!(
                "unknown network {other:?}: use user[,hostfwd=tcp::2222-:22], tap=IFNAME or bridge=BRIDGE"
            )),
        }
    }
}

/// A network interface name as Linux allows one (1-15 bytes, no `/`, `,` or space).
pub fn check_ifname(name: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad interface name {name:?}: 1-15 letters, digits, -, _ or ."
        ))
    }
}

/// Firmware that boots a guest from its first disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF (UEFI): its code image and this VM's own copy of the variable store.
    Uefi {
        /// Read-only code (`OVMF_CODE*.fd`).
        code: PathBuf,
        /// The VM's writable variables (copied from `OVMF_VARS*.fd` on its first boot).
        vars: PathBuf,
    },
}

/// How QEMU starts the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// QEMU loads a kernel itself (`-kernel`, `-initrd`, `-append`).
    Direct {
        /// The kernel image.
        kernel: PathBuf,
        /// Its initramfs, if any.
        initrd: Option<PathBuf>,
        /// Its command line.
        cmdline: String,
    },
    /// The firmware boots the first disk (its boot loader and its own kernel).
    Firmware(Firmware),
}

/// Escapes a value for a QEMU option string, where `,` separates options and `,,`
/// stands for a comma.
pub fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_value(p: &Path) -> String {
    qemu_escape(&p.display().to_string())
}

impl Disk {
    /// The `-drive`/`-device` pair of disk number `index` (virtio-blk); `boots`: the
    /// firmware boots the disks, in their order (with `-kernel`, QEMU's own loader
    /// takes the first boot index).
    pub fn args(&self, index: usize, boots: bool) -> Vec<String> {
        let format = self.format.unwrap_or(DiskFormat::Raw).as_str();
        let mut drive = format!(
            "if=none,id=disk{index},file={},format={format},cache=writeback",
            path_value(&self.path)
        );
        if self.snapshot {
            drive.push_str(",snapshot=on");
        }
        if self.readonly {
            drive.push_str(",readonly=on");
        }
        let mut device = format!("virtio-blk-pci,drive=disk{index}");
        if boots {
            device.push_str(&format!(",bootindex={index}"));
        }
        vec!["-drive".into(), drive, "-device".into(), device]
    }
}

impl Net {
    /// The `-netdev`/`-device` pair of NIC number `index`, with a stable MAC.
    pub fn args(&self, index: usize, mac: &str) -> Vec<String> {
        let netdev = match self {
            Self::User { forwards } => {
                let mut s = format!("user,id=net{index}");
                for f in forwards {
                    s.push_str(&format!(",hostfwd={f}"));
                }
                s
            }
            Self::Tap { ifname } => {
                format!("tap,id=net{index},ifname={ifname},script=no,downscript=no")
            }
            Self::Bridge { bridge } => format!("bridge,id=net{index},br={bridge}"),
        };
        vec![
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-pci,netdev=net{index},mac={mac}"),
        ]
    }
}

/// A locally administered MAC for NIC `index` of the VM `name`, the same every start
/// (a guest's network configuration often matches on it). QEMU's own prefix 52:54:00.
pub fn stable_mac(name: &str, index: usize) -> String {
    let h = crc32fast::hash(format!("{name}/{index}").as_bytes()).to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[1], h[2], h[3])
}

impl Boot {
    /// QEMU's options for this boot.
    pub fn args(&self) -> Vec<String> {
        match self {
            Self::Direct {
                kernel,
                initrd,
                cmdline,
            } => {
                let mut a = vec!["-kernel".into(), kernel.display().to_string()];
                if let Some(i) = initrd {
                    a.extend(["-initrd".into(), i.display().to_string()]);
                }
                a.extend(["-append".into(), cmdline.clone()]);
                a
            }
            Self::Firmware(Firmware::Bios) => vec![],
            Self::Firmware(Firmware::Uefi { code, vars }) => vec![
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    path_value(code)
                ),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", path_value(vars)),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_forwards_parse_in_qemus_form_and_the_short_one() {
        let f: PortForward = "tcp::2222-:22".parse().unwrap();
        assert_eq!(
            (f.host_port, f.guest_port, f.protocol),
            (2222, 22, Protocol::Tcp)
        );
        assert_eq!(f.to_string(), "tcp::2222-:22");
        let f: PortForward = "udp:127.0.0.1:5353-10.0.2.15:53".parse().unwrap();
        assert_eq!(f.to_string(), "udp:127.0.0.1:5353-:53");
        assert_eq!(
            "8080:80".parse::<PortForward>().unwrap().to_string(),
            "tcp::8080-:80"
        );
        for bad in [
            "",
            "22",
            "tcp::0-:22",
            "sctp::1-:2",
            "tcp:nohost:1-:2",
            "1:99999",
        ] {
            assert!(bad.parse::<PortForward>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn networks_parse_and_refuse_what_qemu_would_misread() {
        assert_eq!(
            "user,hostfwd=tcp::2222-:22".parse::<Net>().unwrap(),
            Net::User {
                forwards: vec!["tcp::2222-:22".parse().unwrap()]
            }
        );
        assert_eq!(
            "tap=tap0".parse::<Net>().unwrap(),
            Net::Tap {
                ifname: "tap0".into()
            }
        );
        assert_eq!(
            "bridge,br=br0".parse::<Net>().unwrap(),
            Net::Bridge {
                bridge: "br0".into()
            }
        );
        for bad in [
            "",
            "vde",
            "tap",
            "tap=a,script=/bin/evil",
            "user,smb=/",
            "tap=a b",
            "bridge=x/y",
        ] {
            assert!(bad.parse::<Net>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_comma_in_a_path_cannot_add_an_option() {
        let d = Disk {
            path: "/img/a,snapshot=off.qcow2".into(),
            format: Some(DiskFormat::Qcow2),
            snapshot: true,
            readonly: false,
        };
        let a = d.args(0, true);
        assert_eq!(
            a[1],
            "if=none,id=disk0,file=/img/a,,snapshot=off.qcow2,format=qcow2,cache=writeback,snapshot=on"
        );
        assert_eq!(a[3], "virtio-blk-pci,drive=disk0,bootindex=0");
    }

    #[test]
    fn macs_are_stable_and_distinct() {
        assert_eq!(stable_mac("web1", 0), stable_mac("web1", 0));
        assert_ne!(stable_mac("web1", 0), stable_mac("web1", 1));
        assert!(stable_mac("web1", 0).starts_with("52:54:00:"));
    }
}
