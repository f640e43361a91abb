//! `.go.buildinfo`: the Go version and main module a binary was built with.

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// `(major, minor)` of a `go1.N[.P]` version string.
pub fn go_release(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// What `.go.buildinfo` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// e.g. `go1.21.13`.
    pub version: String,
    /// The main module's path (`path` line of the module info).
    pub module: Option<String>,
}

/// Reads `.go.buildinfo` (Go ≥ 1.18 inline format: a 32-byte header, then
/// varint-length-prefixed version and module-info strings).
pub fn parse_buildinfo(data: &[u8]) -> Option<BuildInfo> {
    if !data.starts_with(BUILDINFO_MAGIC) || data.len() < 32 {
        return None;
    }
    let flags = data[15];
    if flags & 0x2 == 0 {
        return None; // pre-1.18 pointer format
    }
    let mut pos = 32;
    let mut string = || -> Option<&[u8]> {
        let (len, n) = read_uvarint(data.get(pos..)?)?;
        let start = pos + n;
        pos = start.checked_add(len as usize)?;
        data.get(start..pos)
    };
    let version = String::from_utf8(string()?.to_vec()).ok()?;
    // The module info sits between two 16-byte sentinels; its lines are
    // tab-separated, the main module's import path on the `path` line.
    let module = string()
        .and_then(|info| info.get(16..info.len().checked_sub(16)?))
        .map(String::from_utf8_lossy)
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("path\t").map(str::to_string))
        });
    Some(BuildInfo { version, module })
}

fn read_uvarint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        x |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((x, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildinfo_version() {
        let mut data = BUILDINFO_MAGIC.to_vec();
        data.push(8); // pointer size
        data.push(0x2); // inline strings
        data.resize(32, 0);
        data.push(9);
        data.extend_from_slice(b"go1.21.13");
        let info = b"0123456789abcdefpath\texample.com/svc\nmod\texample.com/svc\t(devel)\t\n0123456789abcdef";
        data.push(info.len() as u8);
        data.extend_from_slice(info);
        assert_eq!(
            parse_buildinfo(&data),
            Some(BuildInfo {
                version: "go1.21.13".into(),
                module: Some("example.com/svc".into())
            })
        );
        data.truncate(42);
        data.push(0);
        assert_eq!(parse_buildinfo(&data).unwrap().module, None);
        data[15] = 0;
        assert_eq!(parse_buildinfo(&data), None);
        assert_eq!(parse_buildinfo(b"nope"), None);
    }

    #[test]
    fn go_releases() {
        assert_eq!(go_release("go1.21.13"), Some((1, 21)));
        assert_eq!(go_release("go1.27rc1"), Some((1, 27)));
        assert_eq!(go_release("go1.9"), Some((1, 9)));
        assert_eq!(go_release("devel +abc"), None);
        assert!(go_release("go1.17.5").unwrap() < super::super::OLDEST_GO);
    }
}
