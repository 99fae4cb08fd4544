//! Minimal writer (and reader, for checks) of the cpio "newc" format (magic `070701`), the
//! format the Linux kernel unpacks as an initramfs.
//!
//! Layout of every entry: a 110-byte ASCII header (`070701` + 13 fields of 8 hex digits),
//! the NUL-terminated name, zero padding to a multiple of 4, the data, zero padding to a
//! multiple of 4. The archive ends with an entry named `TRAILER!!!`. Output is
//! deterministic (mtime 0, uid/gid 0, inode numbers in order of insertion).

/// File type bits (from `<sys/stat.h>`).
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Writer {
    /// Empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (`perm` like 0o755). Parents must be added before children.
    pub fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data);
    }

    /// A symbolic link pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[]);
    }

    /// Appends the trailer, pads the archive to 512 bytes and returns it.
    pub fn finish(mut self) -> Vec<u8> {
        self.raw_entry(TRAILER, 0, 0, 1, (0, 0), &[]);
        pad_to(&mut self.buf, 512);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let name = name.trim_start_matches('/');
        self.raw_entry(name, self.next_ino, mode, nlink, rdev, data);
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) {
        let filesize = u32::try_from(data.len()).expect("cpio newc entries are limited to 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("name too long");
        let fields = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            filesize, 0, // devmajor
            0, // devminor
            rdev.0, rdev.1, namesize, 0, // check
        ];
        self.buf.extend_from_slice(MAGIC);
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        pad_to(&mut self.buf, 4);
        self.buf.extend_from_slice(data);
        pad_to(&mut self.buf, 4);
    }
}

fn pad_to(buf: &mut Vec<u8>, align: usize) {
    let rem = buf.len() % align;
    if rem != 0 {
        buf.resize(buf.len() + align - rem, 0);
    }
}

/// One decoded entry (used to check archives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without leading `/`.
    pub name: String,
    /// Inode number.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Device major/minor for device nodes.
    pub rdev: (u32, u32),
    /// File contents or symlink target.
    pub data: Vec<u8>,
}

/// Decodes a newc archive up to (not including) its trailer. Checks magic, alignment and
/// bounds; returns a description of the first problem.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut pos = 0usize;
    let mut out = Vec::new();
    loop {
        if !pos.is_multiple_of(4) {
            return Err(format!("header at {pos} not 4-byte aligned"));
        }
        let hdr = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| format!("truncated header at {pos}"))?;
        if &hdr[..6] != MAGIC {
            return Err(format!("bad magic at {pos}"));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8])
                .map_err(|_| format!("non-ASCII field at {pos}"))?;
            *v = u32::from_str_radix(s, 16).map_err(|_| format!("bad hex field {s:?} at {pos}"))?;
        }
        let (filesize, namesize) = (f[6] as usize, f[11] as usize);
        let name_start = pos + HEADER_LEN;
        let name_bytes = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| format!("truncated name at {name_start}"))?;
        if namesize == 0 || name_bytes[namesize - 1] != 0 {
            return Err(format!("name at {name_start} not NUL-terminated"));
        }
        let name = String::from_utf8(name_bytes[..namesize - 1].to_vec())
            .map_err(|_| format!("non-UTF-8 name at {name_start}"))?;
        let data_start = (name_start + namesize).next_multiple_of(4);
        let data = bytes
            .get(data_start..data_start + filesize)
            .ok_or_else(|| format!("truncated data of {name}"))?
            .to_vec();
        pos = (data_start + filesize).next_multiple_of(4);
        if name == TRAILER {
            return Ok(out);
        }
        out.push(Entry {
            name,
            ino: f[0],
            mode: f[1],
            nlink: f[4],
            rdev: (f[9], f[10]),
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.dir("/bin", 0o755);
        w.dir("dev", 0o755);
        w.file("/bin/busybox", 0o755, b"\x7fELF-ish");
        w.symlink("/bin/sh", "busybox");
        w.char_dev("/dev/console", 0o600, 5, 1);
        w.file("/init", 0o755, b"#!/bin/sh\n");
        w.finish()
    }

    #[test]
    fn header_fields_are_exact() {
        let mut w = Writer::new();
        w.file("/a", 0o644, b"xyz");
        let bytes = w.finish();
        let hdr = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            hdr,
            concat!(
                "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
                "00000003", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000"
            )
        );
        // name "a\0" at 110..112, padded to 112 (already aligned), data at 112..115, pad to 116.
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..115], b"xyz");
        assert_eq!(bytes[115], 0);
        assert_eq!(&bytes[116..122], b"070701");
        // trailer name
        assert_eq!(&bytes[116 + 110..116 + 110 + 11], b"TRAILER!!!\0");
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes[116 + 110 + 11..].iter().all(|&b| b == 0));
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len() % 512, 0);
        let e = parse(&bytes).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "dev", "bin/busybox", "bin/sh", "dev/console", "init"]
        );
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(e[2].mode, S_IFREG | 0o755);
        assert_eq!(e[2].data, b"\x7fELF-ish");
        assert_eq!(e[3].mode, S_IFLNK | 0o777);
        assert_eq!(e[3].data, b"busybox");
        assert_eq!(e[4].mode, S_IFCHR | 0o600);
        assert_eq!(e[4].rdev, (5, 1));
        assert!(e[4].data.is_empty());
        let inos: Vec<_> = e.iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn every_header_is_aligned() {
        let bytes = sample();
        let mut count = 0;
        for (i, w) in bytes.windows(6).enumerate() {
            if w == MAGIC {
                assert_eq!(i % 4, 0, "magic at unaligned offset {i}");
                count += 1;
            }
        }
        assert_eq!(count, 7); // six entries + trailer
    }

    #[test]
    fn deterministic() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse(b"070702").is_err());
        let mut bytes = sample();
        bytes.truncate(200);
        assert!(parse(&bytes).is_err());
    }

    /// Interop check with GNU cpio when it is installed (the kit installs it).
    #[test]
    fn gnu_cpio_lists_it() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio not installed; skipping");
            return;
        };
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            ["bin", "dev", "bin/busybox", "bin/sh", "dev/console", "init"]
        );
    }
}
