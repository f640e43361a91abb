//! Reading what `/proc` says about a target. Parsers are pure (they take the
//! file's text) so they are unit-tested without a live process.

use std::path::PathBuf;

use crate::model::error::TargetError;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub path: Option<PathBuf>,
}

impl MapEntry {
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// Parses the text of `/proc/PID/maps`. Malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_ascii_whitespace();
            let (range, perms, offset) = (it.next()?, it.next()?, it.next()?);
            let (_dev, _inode) = (it.next()?, it.next()?);
            let rest: Vec<&str> = it.collect();
            let (start, end) = range.split_once('-')?;
            let path = rest.join(" ");
            Some(MapEntry {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                perms: perms.to_string(),
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: path.starts_with('/').then(|| PathBuf::from(path)),
            })
        })
        .collect()
}

/// Memory figures from `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemStatus {
    pub vm_rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
}

/// Parses the memory lines of `/proc/PID/status`.
pub fn parse_status(text: &str) -> MemStatus {
    let mut s = MemStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = value
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match key {
            "VmRSS" => s.vm_rss = kib * 1024,
            "RssAnon" => s.rss_anon = kib * 1024,
            "RssFile" => s.rss_file = kib * 1024,
            "RssShmem" => s.rss_shmem = kib * 1024,
            _ => {}
        }
    }
    s
}

/// Parses the `CapEff:` line of `/proc/self/status`.
pub fn parse_cap_eff(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

pub fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// Fails with [`TargetError::NoSuchPid`] unless the process exists.
pub fn check_pid(pid: u32) -> Result<(), TargetError> {
    if pid == 0 || !proc_dir(pid).join("status").exists() {
        return Err(TargetError::NoSuchPid(pid));
    }
    Ok(())
}

/// The path of the target's executable as the host sees it. `/proc/PID/exe`
/// resolves through mount namespaces, and is kept open by the kernel even when
/// the file was deleted.
pub fn exe_path(pid: u32) -> Result<PathBuf, TargetError> {
    std::fs::read_link(proc_dir(pid).join("exe")).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TargetError::NoSuchPid(pid)
        } else {
            TargetError::Exe { pid, source }
        }
    })
}

/// The process's mappings, or `None` when they cannot be read or are empty:
/// an exiting process shows an empty `maps` file, which must never replace
/// the mappings read while it ran.
pub fn read_maps(pid: u32) -> Option<Vec<MapEntry>> {
    let text = std::fs::read_to_string(proc_dir(pid).join("maps")).ok()?;
    Some(parse_maps(&text)).filter(|m| !m.is_empty())
}

pub fn read_status(pid: u32) -> Option<MemStatus> {
    std::fs::read_to_string(proc_dir(pid).join("status"))
        .ok()
        .map(|t| parse_status(&t))
}

/// `/proc/PID/pagemap` entries read at once (512 KiB).
const PAGEMAP_CHUNK: usize = 64 * 1024;
const PAGE: u64 = 4096;

/// The resident pages of the mappings `maps` (merged `[start, end)`
/// ranges), from pagemap entries that `read(offset, buf)` fills in: bit 63
/// means the page is present in memory. Mappings without access (Go's
/// address-space reservations) are skipped; one that cannot be read is
/// taken as empty.
pub fn resident_ranges(
    maps: &[MapEntry],
    read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; PAGEMAP_CHUNK * 8];
    for m in maps.iter().filter(|m| !m.perms.starts_with("---")) {
        let mut page = m.start & !(PAGE - 1);
        while page < m.end {
            let n = (((m.end - page).div_ceil(PAGE)) as usize).min(PAGEMAP_CHUNK);
            let chunk = &mut buf[..n * 8];
            if read(page / PAGE * 8, chunk).is_err() {
                break;
            }
            for (i, e) in chunk.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                if entry >> 63 == 0 {
                    continue;
                }
                let at = page + i as u64 * PAGE;
                match out.last_mut() {
                    Some(last) if last.1 == at => last.1 = at + PAGE,
                    _ => out.push((at, at + PAGE)),
                }
            }
            page += n as u64 * PAGE;
        }
    }
    out
}

/// The pages of `pid` resident now (see [`resident_ranges`]).
pub fn read_resident(pid: u32) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::FileExt as _;
    let maps = read_maps(pid).ok_or_else(|| std::io::Error::other("no mappings"))?;
    let f = std::fs::File::open(proc_dir(pid).join("pagemap"))?;
    Ok(resident_ranges(&maps, &mut |off, buf| {
        f.read_exact_at(buf, off)
    }))
}

/// (inode, port) of the listening sockets in a `/proc/PID/net/tcp` or
/// `tcp6` text.
pub fn parse_listening(text: &str) -> Vec<(u64, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            (*f.get(3)? == "0A").then_some(())?; // TCP_LISTEN
            Some((f.get(9)?.parse().ok()?, port))
        })
        .collect()
}

/// The TCP ports `pid` listens on.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let dir = proc_dir(pid);
    let inodes: std::collections::HashSet<u64> = std::fs::read_dir(dir.join("fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let l = link.to_str()?;
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    ["net/tcp", "net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .flat_map(|t| parse_listening(&t))
        .filter(|(inode, _)| inodes.contains(inode))
        .map(|(_, port)| port)
        .collect()
}

/// The state letter of a `/proc/.../stat` line (after the command name).
pub fn parse_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether every thread of `pid` is stopped (`T`) or traced (`t`); `None`
/// when the process is gone.
pub fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(proc_dir(pid).join("task")).ok()?;
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // a thread that just exited
        };
        match parse_state(&stat) {
            Some('T' | 't') => any = true,
            Some('Z' | 'X') | None => {}
            Some(_) => return Some(false),
        }
    }
    Some(any)
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state is Z.
    match std::fs::read_to_string(proc_dir(pid).join("stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_maps_lines() {
        let text = "\
00400000-0047f000 r-xp 00000000 fe:01 1234                               /tmp/app
0047f000-004ff000 r--p 0007f000 fe:01 1234                               /tmp/app (deleted)
c000000000-c000400000 rw-p 00000000 00:00 0 
7ffd1000-7ffd2000 r-xp 00000000 00:00 0                                  [vdso]
garbage
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].start, 0x400000);
        assert_eq!(m[0].end, 0x47f000);
        assert_eq!(m[0].perms, "r-xp");
        assert_eq!(m[0].path.as_deref(), Some(Path::new("/tmp/app")));
        assert_eq!(m[1].offset, 0x7f000);
        assert_eq!(m[1].path.as_deref(), Some(Path::new("/tmp/app (deleted)")));
        assert_eq!(m[2].path, None);
        assert_eq!(m[3].path, None);
        assert!(m[0].contains(0x400000) && !m[0].contains(0x47f000));
    }

    #[test]
    fn parses_status_memory() {
        let text = "Name:\tapp\nVmRSS:\t    2048 kB\nRssAnon:\t    1024 kB\nRssFile:\t  1000 kB\nRssShmem:\t 24 kB\n";
        let s = parse_status(text);
        assert_eq!(s.vm_rss, 2048 * 1024);
        assert_eq!(s.rss_anon, 1024 * 1024);
        assert_eq!(s.rss_file, 1000 * 1024);
        assert_eq!(s.rss_shmem, 24 * 1024);
    }

    #[test]
    fn resident_pages_from_pagemap_entries() {
        let map = |start: u64, end: u64, perms: &str| MapEntry {
            start,
            end,
            perms: perms.into(),
            offset: 0,
            path: None,
        };
        let maps = [
            map(0x10000, 0x15000, "rw-p"),
            map(0x15000, 0x20000, "---p"),
            map(0x20000, 0x22000, "r--p"),
        ];
        // Present: pages 0x10, 0x11, 0x13 and 0x14, 0x21.
        let present = [0x10u64, 0x11, 0x13, 0x14, 0x21];
        let mut asked = Vec::new();
        let got = resident_ranges(&maps, &mut |off, buf| {
            asked.push(off / 8);
            for (i, e) in buf.chunks_exact_mut(8).enumerate() {
                let page = off / 8 + i as u64;
                let v: u64 = if present.contains(&page) {
                    1 << 63
                } else {
                    1 << 62
                };
                e.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        });
        assert_eq!(
            got,
            vec![(0x10000, 0x12000), (0x13000, 0x15000), (0x21000, 0x22000)]
        );
        assert_eq!(asked, vec![0x10, 0x20], "reservations are not read");
        // This process has resident pages, readable through pagemap.
        let mine = read_resident(std::process::id()).unwrap();
        assert!(mine.iter().map(|(s, e)| e - s).sum::<u64>() > 1 << 20);
    }

    #[test]
    fn finds_listening_sockets() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A4C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12399 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse_listening(text), vec![(12345, 8080)]);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
    }

    #[test]
    fn parses_the_state_letter() {
        assert_eq!(parse_state("42 (my (odd) prog) T 1 2"), Some('T'));
        assert_eq!(parse_state("42 (a) S 1"), Some('S'));
        assert_eq!(parse_state("garbage"), None);
        assert_eq!(all_threads_stopped(std::process::id()), Some(false));
    }

    #[test]
    fn parses_cap_eff() {
        assert_eq!(
            parse_cap_eff("CapInh:\t0\nCapEff:\t000001ffffffffff\n"),
            0x1ff_ffff_ffff
        );
        assert_eq!(parse_cap_eff("nothing"), 0);
    }
}
