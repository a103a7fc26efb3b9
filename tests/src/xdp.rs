//! The `sinkhole` XDP program loaded for `BPF_PROG_TEST_RUN`, with its maps pinned in a
//! directory of its own (so tests running side by side do not share counters).

use std::path::Path;

use aya::Ebpf;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use sinkhole::kernel::{BlockMaps, Scope};

use crate::netns::PinDir;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub struct TestProgram {
    ebpf: Ebpf,
    pub maps: BlockMaps,
    // Last: the pins go after the program and the maps are closed.
    pins: PinDir,
}

impl TestProgram {
    /// Opens fresh maps in a new pin directory and loads the program (not attached) with
    /// `scope`.
    pub fn load(tag: &str, scope: &Scope) -> anyhow::Result<TestProgram> {
        let pins = PinDir::new(tag);
        let (ebpf, maps) = load_program(pins.path(), scope, None)?;
        Ok(TestProgram { ebpf, maps, pins })
    }

    /// Replaces the program with one loaded with `scope`, on the same maps (the scope is
    /// fixed when a program is loaded, as the daemon does at start).
    pub fn reload(&mut self, scope: &Scope) -> anyhow::Result<()> {
        (self.ebpf, self.maps) = load_program(self.pins.path(), scope, None)?;
        Ok(())
    }

    pub fn pin_dir(&self) -> &std::path::Path {
        self.pins.path()
    }

    /// The verdict for one frame.
    pub fn verdict(&self, frame: &[u8]) -> anyhow::Result<u32> {
        Ok(self.run(frame, 1)?.return_value)
    }

    /// Runs `frame` `repeat` times in the kernel; the result's duration is per run.
    pub fn run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<aya::programs::TestRunResult> {
        Ok(sinkhole_program(&self.ebpf)?.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })?)
    }
}

/// Opens (or creates) the maps pinned in `pin_dir` and loads the `sinkhole` program with
/// `scope`, not attached: this build's, or `object`, another build (the XDP bench measures
/// builds side by side on the same maps).
pub fn load_program(
    pin_dir: &Path,
    scope: &Scope,
    object: Option<&[u8]>,
) -> anyhow::Result<(Ebpf, BlockMaps)> {
    let (mut ebpf, maps) = match object {
        None => sinkhole::kernel::maps::open(pin_dir, scope)?,
        Some(object) => sinkhole::kernel::maps::open_object(pin_dir, scope, object)?,
    };
    let program: &mut Xdp = ebpf
        .program_mut("sinkhole")
        .ok_or_else(|| anyhow::anyhow!("no program `sinkhole`"))?
        .try_into()?;
    program.load()?;
    Ok((ebpf, maps))
}

/// The `sinkhole` program of `ebpf`.
pub fn sinkhole_program(ebpf: &Ebpf) -> anyhow::Result<&Xdp> {
    let program = ebpf
        .program("sinkhole")
        .ok_or_else(|| anyhow::anyhow!("no program `sinkhole`"))?;
    Ok(program.try_into()?)
}
