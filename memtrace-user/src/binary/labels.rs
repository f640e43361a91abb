//! pprof label sets in a Go program's memory. A goroutine's `g.labels`
//! points at the `labelMap` that `pprof.Do` / `SetGoroutineLabels` stored,
//! which the goroutine's new children share. Its shape depends on the
//! release:
//! - Go 1.19–1.23: `type labelMap map[string]string`, so `g.labels` is a
//!   `*map`: a pointer to the map's `*hmap`, whose buckets hold eight
//!   string keys then eight string values each;
//! - Go 1.24 and later: `type labelMap struct{ LabelSet }` (`label.Set` in
//!   1.27), a slice of `{key, value string}` pairs, sorted by key.
//!
//! A label set is immutable once stored, so a pointer names one set until
//! the garbage collector frees it (callers re-read after a GC cycle).
//! Reads are bounded: a pointer that is not a label set (an event outside
//! Go code, a reused address) fails to decode rather than yielding
//! garbage.

use crate::host::remote::RemoteMemory;

/// How a release lays out a label set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `map[string]string` (Go 1.19–1.23).
    Map,
    /// A sorted slice of key/value pairs (Go 1.24 and later).
    Slice,
}

impl Format {
    /// Where, from a set's first word, the second word of its fingerprint
    /// sits (`memtrace_common::labels_check`): a map's hash seed (`hash0`
    /// and what follows, in its `hmap`), or the first label's value (its
    /// string data, in the slice's array).
    pub fn check_at(self) -> u64 {
        match self {
            Format::Map => 12,
            Format::Slice => 16,
        }
    }

    /// The fingerprint of the set at `ptr` as it stands now.
    pub fn check(self, mem: &dyn RemoteMemory, ptr: u64) -> std::io::Result<u64> {
        let w1 = mem.read_u64(ptr)?;
        let w2 = mem.read_u64(w1.wrapping_add(self.check_at()))?;
        Ok(memtrace_common::labels_check(w1, w2))
    }

    /// The format of Go release (major, minor).
    pub fn of(release: (u32, u32)) -> Format {
        if release >= (1, 24) {
            Format::Slice
        } else {
            Format::Map
        }
    }
}

/// The most labels a set may hold (pprof's are a handful).
pub const MAX_LABELS: usize = 64;
/// Bytes read of a key or value at most; longer ones are cut.
pub const MAX_STRING: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label set at {0:#x} cannot be read")]
    Unreadable(u64),
    #[error("label set at {0:#x} does not look like one ({1})")]
    Malformed(u64, &'static str),
}

/// The labels of the set at `ptr` (a `g.labels` value), sorted by key.
pub fn read(
    mem: &dyn RemoteMemory,
    ptr: u64,
    format: Format,
) -> Result<Vec<(String, String)>, LabelError> {
    let mut labels = match format {
        Format::Slice => read_slice(mem, ptr)?,
        Format::Map => read_map(mem, ptr)?,
    };
    if labels.iter().any(|(k, _)| k.is_empty()) {
        return Err(LabelError::Malformed(ptr, "an empty key"));
    }
    labels.sort();
    labels.dedup_by(|a, b| a.0 == b.0);
    Ok(labels)
}

fn words(mem: &dyn RemoteMemory, at: u64, n: usize, ptr: u64) -> Result<Vec<u64>, LabelError> {
    mem.read_words(at, n)
        .map_err(|_| LabelError::Unreadable(ptr))
}

/// A Go string header's text: (data, len), as [`text`]; a string longer
/// than [`MAX_STRING`] is cut.
fn string(mem: &dyn RemoteMemory, data: u64, len: u64, ptr: u64) -> Result<String, LabelError> {
    if len > 1 << 20 || (len > 0 && data == 0) {
        return Err(LabelError::Malformed(ptr, "string length"));
    }
    let mut buf = vec![0u8; (len as usize).min(MAX_STRING)];
    mem.read(data, &mut buf)
        .map_err(|_| LabelError::Unreadable(ptr))?;
    text(&buf, len as usize > buf.len()).map_err(|why| LabelError::Malformed(ptr, why))
}

/// The first bytes `buf` of a label's string as text, `cut` when the
/// string is longer. Nothing is made up: the bytes must be UTF-8 without
/// control characters (a set whose memory was reused reads as anything),
/// else the whole set is refused. A cut string ends at a character
/// boundary and is marked `…`.
pub fn text(buf: &[u8], cut: bool) -> Result<String, &'static str> {
    let text = match std::str::from_utf8(buf) {
        Ok(t) => t,
        // Cut inside a character: keep what comes before it.
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&buf[..e.valid_up_to()]).expect("valid up to there")
        }
        Err(_) => return Err("not UTF-8"),
    };
    if text.chars().any(char::is_control) {
        return Err("control characters");
    }
    let mut s = text.to_string();
    if cut {
        s.push('…');
    }
    Ok(s)
}

/// A set as the probes copied it (`memtrace_common::label_capture`),
/// checked as a set read from memory is, and sorted by key.
pub fn from_captured(
    ptr: u64,
    captured: &[memtrace_common::CapturedLabel],
) -> Result<Vec<(String, String)>, LabelError> {
    let field = |bytes: &[u8], len: u32| {
        let len = len as usize;
        text(&bytes[..len.min(bytes.len())], len > bytes.len())
            .map_err(|why| LabelError::Malformed(ptr, why))
    };
    let mut labels = captured
        .iter()
        .map(|l| Ok((field(&l.key, l.key_len)?, field(&l.value, l.value_len)?)))
        .collect::<Result<Vec<_>, LabelError>>()?;
    if labels.iter().any(|(k, _)| k.is_empty()) {
        return Err(LabelError::Malformed(ptr, "an empty key"));
    }
    labels.sort();
    labels.dedup_by(|a, b| a.0 == b.0);
    Ok(labels)
}

/// Go ≥ 1.24: `ptr` → `{list []label}`; each label is two strings.
fn read_slice(mem: &dyn RemoteMemory, ptr: u64) -> Result<Vec<(String, String)>, LabelError> {
    let hdr = words(mem, ptr, 3, ptr)?;
    let (data, len, cap) = (hdr[0], hdr[1] as usize, hdr[2] as usize);
    if len > cap || len > MAX_LABELS || (len > 0 && data == 0) {
        return Err(LabelError::Malformed(ptr, "slice header"));
    }
    let w = words(mem, data, 4 * len, ptr)?;
    w.chunks_exact(4)
        .map(|l| Ok((string(mem, l[0], l[1], ptr)?, string(mem, l[2], l[3], ptr)?)))
        .collect()
}

/// `hmap` (runtime/map.go before swiss maps): count, flags, B, noverflow,
/// hash0, buckets, oldbuckets, nevacuate, extra.
const HMAP_WORDS: usize = 6;
/// A `map[string]string` bucket: 8 tophash bytes, 8 keys, 8 values (16
/// bytes each), the overflow pointer.
const BUCKET_BYTES: usize = 8 + 8 * 16 + 8 * 16 + 8;
/// `tophash` values below this mark an empty or evacuated cell.
const MIN_TOP_HASH: u8 = 5;
/// Buckets followed at most (B ≤ 4: a map of up to ~100 labels).
const MAX_BUCKETS: usize = 64;

/// Go ≤ 1.23: `ptr` → `*hmap` → buckets of string pairs.
fn read_map(mem: &dyn RemoteMemory, ptr: u64) -> Result<Vec<(String, String)>, LabelError> {
    let hmap = words(mem, ptr, 1, ptr)?[0];
    if hmap == 0 {
        return Ok(Vec::new());
    }
    let h = words(mem, hmap, HMAP_WORDS, ptr)?;
    let count = h[0] as usize;
    let b = (h[1] >> 8) & 0xff;
    let (buckets, old) = (h[2], h[3]);
    if count > MAX_LABELS || b > 4 || (count > 0 && buckets == 0) {
        return Err(LabelError::Malformed(ptr, "map header"));
    }
    let mut out = Vec::with_capacity(count);
    let mut todo: Vec<u64> = (0..1u64 << b)
        .map(|i| buckets + i * BUCKET_BYTES as u64)
        .collect();
    // A map still growing keeps entries in its old buckets too (the
    // evacuated cells are marked and skipped).
    if old != 0 && b > 0 {
        todo.extend((0..1u64 << (b - 1)).map(|i| old + i * BUCKET_BYTES as u64));
    }
    let mut seen = 0;
    while let Some(at) = todo.pop() {
        seen += 1;
        if seen > MAX_BUCKETS {
            return Err(LabelError::Malformed(ptr, "bucket chain"));
        }
        let mut buf = vec![0u8; BUCKET_BYTES];
        mem.read(at, &mut buf)
            .map_err(|_| LabelError::Unreadable(ptr))?;
        let word = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        for (cell, &top) in buf[..8].iter().enumerate() {
            if top < MIN_TOP_HASH {
                continue;
            }
            let k = 8 + cell * 16;
            let v = 8 + 8 * 16 + cell * 16;
            out.push((
                string(mem, word(k), word(k + 8), ptr)?,
                string(mem, word(v), word(v + 8), ptr)?,
            ));
        }
        let overflow = word(BUCKET_BYTES - 8);
        if overflow != 0 {
            todo.push(overflow);
        }
    }
    if out.len() != count {
        return Err(LabelError::Malformed(ptr, "map count"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::remote::FakeMemory;

    /// Lays out strings at `at` onwards; returns their (data, len) pairs.
    fn strings(mem: &mut FakeMemory, at: u64, s: &[&str]) -> Vec<(u64, u64)> {
        let mut next = at;
        s.iter()
            .map(|s| {
                mem.map(next, s.as_bytes().to_vec());
                let r = (next, s.len() as u64);
                next += 64;
                r
            })
            .collect()
    }

    fn put_words(mem: &mut FakeMemory, at: u64, w: &[u64]) {
        mem.map_words(at, w);
    }

    #[test]
    fn a_set_whose_memory_was_reused_is_refused_never_invented() {
        let mut mem = FakeMemory::default();
        let s = strings(&mut mem, 0x9000, &["user", "ann", "route", "/b"]);
        put_words(&mut mem, 0x1000, &[0x2000, 2, 2]);
        let pairs = [
            s[0].0, s[0].1, s[1].0, s[1].1, s[2].0, s[2].1, s[3].0, s[3].1,
        ];
        put_words(&mut mem, 0x2000, &pairs);
        assert!(read(&mem, 0x1000, Format::Slice).is_ok());
        // The value's memory now holds zeros (the issue's `user=\x00\x00`),
        // then bytes that are not UTF-8, then a key gone empty: each time
        // the whole set is refused.
        mem.map(s[1].0, vec![0, 0, 0]);
        let e = read(&mem, 0x1000, Format::Slice).unwrap_err();
        assert_eq!(e, LabelError::Malformed(0x1000, "control characters"));
        mem.map(s[1].0, vec![0xff, 0xfe, b'a']);
        let e = read(&mem, 0x1000, Format::Slice).unwrap_err();
        assert_eq!(e, LabelError::Malformed(0x1000, "not UTF-8"));
        mem.map(s[1].0, b"ann".to_vec());
        let mut cut = pairs;
        cut[1] = 0;
        put_words(&mut mem, 0x2000, &cut);
        let e = read(&mem, 0x1000, Format::Slice).unwrap_err();
        assert_eq!(e, LabelError::Malformed(0x1000, "an empty key"));
        // A long value is cut at a character boundary, and says so.
        let long = "é".repeat(MAX_STRING);
        mem.map(0xa000, long.as_bytes().to_vec());
        let mut pairs = pairs;
        pairs[2..4].copy_from_slice(&[0xa000, long.len() as u64]);
        put_words(&mut mem, 0x2000, &pairs);
        let got = read(&mem, 0x1000, Format::Slice).unwrap();
        let v = &got.iter().find(|(k, _)| k == "user").unwrap().1;
        assert!(
            v.ends_with('…') && v.chars().count() == MAX_STRING / 2 + 1,
            "{v}"
        );
    }

    #[test]
    fn formats_by_release() {
        assert_eq!(Format::of((1, 19)), Format::Map);
        assert_eq!(Format::of((1, 23)), Format::Map);
        assert_eq!(Format::of((1, 24)), Format::Slice);
        assert_eq!(Format::of((1, 27)), Format::Slice);
    }

    #[test]
    fn a_slice_of_pairs_is_read_sorted() {
        let mut mem = FakeMemory::default();
        let s = strings(&mut mem, 0x9000, &["tenant", "t7", "route", "/b"]);
        put_words(&mut mem, 0x1000, &[0x2000, 2, 2]);
        put_words(
            &mut mem,
            0x2000,
            &[
                s[0].0, s[0].1, s[1].0, s[1].1, s[2].0, s[2].1, s[3].0, s[3].1,
            ],
        );
        let got = read(&mem, 0x1000, Format::Slice).unwrap();
        assert_eq!(
            got,
            vec![
                ("route".into(), "/b".into()),
                ("tenant".into(), "t7".into())
            ]
        );
    }

    #[test]
    fn a_map_with_an_overflow_bucket_is_read_whole() {
        let mut mem = FakeMemory::default();
        let names: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
        let texts: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = strings(&mut mem, 0x10000, &texts);
        // *labelMap → hmap: count 9, B 0, one bucket and an overflow.
        put_words(&mut mem, 0x1000, &[0x2000]);
        put_words(&mut mem, 0x2000, &[9, 0, 0x3000, 0, 0, 0]);
        let bucket = |mem: &mut FakeMemory, at: u64, cells: &[(u64, u64)], overflow: u64| {
            let mut b = vec![0u8; BUCKET_BYTES];
            for (i, (d, l)) in cells.iter().enumerate() {
                b[i] = 9; // a tophash
                b[8 + i * 16..8 + i * 16 + 8].copy_from_slice(&d.to_le_bytes());
                b[16 + i * 16..16 + i * 16 + 8].copy_from_slice(&l.to_le_bytes());
                let v = 8 + 8 * 16 + i * 16;
                b[v..v + 8].copy_from_slice(&d.to_le_bytes());
                b[v + 8..v + 16].copy_from_slice(&l.to_le_bytes());
            }
            b[BUCKET_BYTES - 8..].copy_from_slice(&overflow.to_le_bytes());
            mem.map(at, b);
        };
        bucket(&mut mem, 0x3000, &s[..8], 0x4000);
        bucket(&mut mem, 0x4000, &s[8..], 0);
        let got = read(&mem, 0x1000, Format::Map).unwrap();
        assert_eq!(got.len(), 9);
        assert_eq!(got[0], ("k0".into(), "k0".into()));
        assert_eq!(got[8], ("k8".into(), "k8".into()));
    }

    #[test]
    fn what_is_not_a_label_set_is_refused() {
        let mut mem = FakeMemory::default();
        put_words(&mut mem, 0x1000, &[0x2000, 5, 2]); // len > cap
        assert!(matches!(
            read(&mem, 0x1000, Format::Slice),
            Err(LabelError::Malformed(..))
        ));
        assert_eq!(
            read(&mem, 0x7000, Format::Slice),
            Err(LabelError::Unreadable(0x7000))
        );
        put_words(&mut mem, 0x5000, &[0x6000]);
        put_words(&mut mem, 0x6000, &[1_000_000, 0, 0x3000, 0, 0, 0]);
        assert!(matches!(
            read(&mem, 0x5000, Format::Map),
            Err(LabelError::Malformed(..))
        ));
        // A long value is cut.
        let long = "x".repeat(1000);
        let s = strings(&mut mem, 0x20000, &["k"]);
        mem.map(0x30000, long.into_bytes());
        put_words(&mut mem, 0x8000, &[0x8100, 1, 1]);
        put_words(&mut mem, 0x8100, &[s[0].0, 1, 0x30000, 1000]);
        let got = read(&mem, 0x8000, Format::Slice).unwrap();
        assert_eq!(got[0].1.chars().count(), MAX_STRING + 1);
    }
}
