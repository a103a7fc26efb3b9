//! A filesystem whose writes the kernel holds back: ext4 on a loop device over a sparse file,
//! with the root block-I/O cgroup's throttle (`blkio.throttle.write_bps_device`) on that device
//! once [`SlowDisk::throttle`] is called. Buffered writes still land in the page cache at once;
//! a sync (`syncfs`, `fsync`) waits for the throttled device, as on a disk that cannot keep up.
//! Needs root and cgroup v1's blkio controller at `/sys/fs/cgroup/blkio`. Everything is undone
//! on drop: the throttle lifted first, so unmounting does not wait for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::{TempDir, run, temp_dir};

/// The throttle of the root cgroup: it holds every writer, the kernel's flusher threads included.
const THROTTLE: &str = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device";
/// What the throttled device takes per second.
const WRITE_BYTES_PER_SECOND: u32 = 8192;
/// The filesystem's size (sparse: only what is written takes space).
const SIZE: &str = "1G";

pub struct SlowDisk {
    mount: PathBuf,
    device: String,
    /// `MAJOR:MINOR` of the loop device, as the throttle names it.
    numbers: String,
    _image: TempDir,
}

impl SlowDisk {
    /// A fresh ext4 filesystem mounted on `dir` (created if missing), not yet throttled.
    pub fn mount(dir: &Path) -> Result<SlowDisk> {
        ensure!(
            Path::new(THROTTLE).exists(),
            "no block I/O throttle at {THROTTLE}"
        );
        let image_dir = temp_dir("slow-disk");
        let image = image_dir.path().join("disk.img");
        let image = image.to_str().context("a UTF-8 temporary path")?;
        run("truncate", &["-s", SIZE, image])?;
        let out = Command::new("losetup")
            .args(["--find", "--show", image])
            .output()
            .context("run losetup")?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let device = String::from_utf8(out.stdout)?.trim().to_string();
        let rdev = rustix::fs::stat(device.as_str())?.st_rdev;
        let numbers = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
        fs::create_dir_all(dir)?;
        let disk = SlowDisk {
            mount: dir.to_path_buf(),
            device,
            numbers,
            _image: image_dir,
        };
        run("mkfs.ext4", &["-q", &disk.device])?;
        run("mount", &[&disk.device, path(&disk.mount)?])?;
        Ok(disk)
    }

    /// From now on the device takes [`WRITE_BYTES_PER_SECOND`].
    pub fn throttle(&self) -> Result<()> {
        let rule = format!("{} {WRITE_BYTES_PER_SECOND}", self.numbers);
        fs::write(THROTTLE, rule).with_context(|| format!("write {THROTTLE}"))
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // A rate of 0 removes the rule.
        if let Err(e) = fs::write(THROTTLE, format!("{} 0", self.numbers)) {
            eprintln!("cannot lift the throttle on {}: {e}", self.device);
        }
        let undo = path(&self.mount)
            .and_then(|mount| run("umount", &[mount]))
            .and_then(|()| run("losetup", &["-d", &self.device]));
        if let Err(e) = undo {
            eprintln!(
                "cannot unmount {} from {}: {e}",
                self.device,
                self.mount.display()
            );
        }
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a UTF-8 temporary path")
}
