//! Fakes for tests of the engine and the policies over it: processes that
//! exist only in the test, and an engine over them and the fake kernel.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::host::Host;
use super::{BinaryId, Engine, Options, TargetSpec};
use crate::binary::goruntime::GoBinary;
use crate::host::procfs::{MapEntry, MemStatus};
use crate::host::remote::{FakeMemory, RemoteMemory};
use crate::kernel::fake::FakeKernel;
use crate::model::lens::Lens;

/// Processes that exist only in the test.
#[derive(Default)]
pub struct FakeHost {
    pub alive: RefCell<HashSet<u32>>,
    pub maps: RefCell<HashMap<u32, (PathBuf, Vec<MapEntry>)>>,
    pub rss: RefCell<HashMap<u32, u64>>,
    pub resumed: RefCell<Vec<u32>>,
}

impl Host for FakeHost {
    fn memory(&self, _pid: u32) -> std::io::Result<Box<dyn RemoteMemory>> {
        Ok(Box::new(FakeMemory::default()))
    }
    fn alive(&self, pid: u32) -> bool {
        self.alive.borrow().contains(&pid)
    }
    fn maps(&self, pid: u32) -> Option<Vec<MapEntry>> {
        self.maps.borrow().get(&pid).map(|m| m.1.clone())
    }
    fn status(&self, pid: u32) -> Option<MemStatus> {
        let vm_rss = *self.rss.borrow().get(&pid)?;
        Some(MemStatus {
            vm_rss,
            ..Default::default()
        })
    }
    fn smaps(&self, _pid: u32) -> Option<String> {
        None
    }
    fn exe(&self, pid: u32) -> Option<PathBuf> {
        self.maps.borrow().get(&pid).map(|m| m.0.clone())
    }
    fn resident_pages(&self, _pid: u32) -> std::io::Result<Vec<(u64, u64)>> {
        Ok(vec![(0x7000_0000, 0x7000_0000 + (1 << 20))])
    }
    fn reap(&self, _pid: u32) -> Option<i32> {
        None
    }
    fn wait_stopped(&self, pid: u32) -> bool {
        self.alive(pid)
    }
    fn resume(&self, pid: u32) {
        self.resumed.borrow_mut().push(pid);
    }
}

pub fn engine(lenses: &[Lens], per_binary: bool) -> Engine<FakeKernel, FakeHost> {
    let mut opts = Options::new(lenses.to_vec());
    opts.per_binary = per_binary;
    opts.holds = true;
    Engine::new(FakeKernel::default(), FakeHost::default(), opts)
}

/// A target of the binary with device and inode `(dev, ino)`.
pub fn spec(pid: u32, (dev, ino): (u64, u64), path: &str) -> TargetSpec {
    TargetSpec {
        pid,
        exe: path.into(),
        attach_path: path.into(),
        binary: BinaryId { dev, ino },
        bin: Arc::new(GoBinary::for_tests(path)),
        launched: false,
    }
}

pub fn add(e: &mut Engine<FakeKernel, FakeHost>, pid: u32, binary: (u64, u64), path: &str) {
    e.host.alive.borrow_mut().insert(pid);
    e.add(spec(pid, binary, path)).unwrap();
}

impl Engine<FakeKernel, FakeHost> {
    /// The fake processes, for a test outside the engine to change.
    pub fn fake_host(&self) -> &FakeHost {
        &self.host
    }

    /// The fake kernel, for a test outside the engine to feed records.
    pub fn fake_kernel(&mut self) -> &mut FakeKernel {
        &mut self.kernel
    }
}
