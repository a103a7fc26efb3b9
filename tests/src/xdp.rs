//! The `sinkhole` XDP program loaded for `BPF_PROG_TEST_RUN`, with its maps pinned in a
//! directory of its own (so tests running side by side do not share counters).

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
        let (ebpf, maps) = load_program(&pins, scope)?;
        Ok(TestProgram { ebpf, maps, pins })
    }

    /// Replaces the program with one loaded with `scope`, on the same maps (the scope is
    /// fixed when a program is loaded, as the daemon does at start).
    pub fn reload(&mut self, scope: &Scope) -> anyhow::Result<()> {
        (self.ebpf, self.maps) = load_program(&self.pins, scope)?;
        Ok(())
    }

    pub fn pin_dir(&self) -> &std::path::Path {
        self.pins.path()
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program("sinkhole")
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("loaded XDP program")
    }

    /// The verdict for one frame.
    pub fn verdict(&self, frame: &[u8]) -> anyhow::Result<u32> {
        Ok(self.run(frame, 1)?.return_value)
    }

    /// Runs `frame` `repeat` times in the kernel; the result's duration is per run.
    pub fn run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<aya::programs::TestRunResult> {
        Ok(self.program().test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })?)
    }
}

fn load_program(pins: &PinDir, scope: &Scope) -> anyhow::Result<(Ebpf, BlockMaps)> {
    let (mut ebpf, maps) = sinkhole::kernel::maps::open(pins.path(), scope)?;
    let program: &mut Xdp = ebpf
        .program_mut("sinkhole")
        .ok_or_else(|| anyhow::anyhow!("no program `sinkhole`"))?
        .try_into()?;
    program.load()?;
    Ok((ebpf, maps))
}
