//! Shared harness for the integration tests.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `sinkhole` binary under test: `$SINKHOLE_BIN` if set, else the workspace's debug build,
/// which is brought up to date once per test process (`cargo build -p sinkhole-user --bin
/// sinkhole`) so that a test never runs a stale binary.
pub fn sinkhole_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SINKHOLE_BIN") {
            return PathBuf::from(bin);
        }
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ sits in the workspace")
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "sinkhole-user", "--bin", "sinkhole"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p sinkhole-user failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace.join("target"), PathBuf::from);
        target.join("debug").join("sinkhole")
    })
    .clone()
}
