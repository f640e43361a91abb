//! Ring-buffer records to typed events.

use memtrace_common::{Event, EventKind, EVENT_SIZE};

/// A decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub kind: EventKind,
    pub ev: Event,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than an [`Event`].
    #[error("short ring-buffer record: {0} bytes, want {EVENT_SIZE}")]
    Short(usize),
    /// The kind tag is unknown (kernel and user space out of sync).
    #[error("unknown event kind {0}")]
    Kind(u32),
}

pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.len() < EVENT_SIZE {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; Event is plain old data, read unaligned.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::from_u32(ev.kind).ok_or(DecodeError::Kind(ev.kind))?;
    Ok(Decoded { kind, ev })
}

#[cfg(test)]
pub fn encode(ev: &Event) -> Vec<u8> {
    // SAFETY: Event is repr(C) without padding.
    unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), EVENT_SIZE) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ev = Event {
            kind: EventKind::Mmap as u32,
            tgid: 7,
            tid: 8,
            stack_id: -14,
            ts_ns: 1,
            addr: 0x7000,
            size: 4096,
            aux: 3,
            aux2: 9,
        };
        let d = decode(&encode(&ev)).unwrap();
        assert_eq!(d.kind, EventKind::Mmap);
        assert_eq!(d.ev, ev);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Short(8)));
        let mut b = vec![0u8; EVENT_SIZE];
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::Kind(99)));
    }
}
