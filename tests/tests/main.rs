//! The integration tests, one binary with a module per area (built and linked once, as
//! ripgrep's `tests/tests.rs`): the real `sinkhole` binary, real clients, real DNS servers and
//! the real kernel, through the `sinkhole_tests` harness.
//!
//! The modules share one process and run side by side on the harness's threads: what each test
//! makes is its own (a free port, a temporary directory, a [`sinkhole_tests::unique_name`] for
//! namespaces, interfaces and pin directories). The process is shared too: the tests that load
//! the whole machine (`floods`) hold [`sinkhole_tests::exclusive`], and those that assert on
//! wall-clock bounds or on DNS answers within a timeout hold [`sinkhole_tests::shared`], so
//! the two never run side by side (as when each file was a test binary of its own, run one
//! after another).

mod address_commands;
mod addresses_report;
mod campaign_replay;
mod campaign_variants;
mod campaigns;
mod cli_config;
mod crash;
mod dashboards;
mod disk_floor;
mod escape;
mod feeds;
mod fleet;
mod floods;
mod greet_wait;
mod hardening;
mod hostile_bodies;
mod hostile_input;
mod hostile_sessions;
mod journald;
mod log_rotation;
mod metrics;
mod notify;
mod package;
mod policy_addresses;
mod policy_check;
mod policy_doc;
mod policy_e2e;
mod policy_phases;
mod policy_replay;
mod privilege;
mod restart;
mod score_dnsbl;
mod score_e2e;
mod score_limits;
mod smtp_clients;
mod smtp_daemon;
mod syn_fingerprints;
mod systemd;
mod tls;
mod update;
mod xdp_events;
mod xdp_netns;
mod xdp_verdicts;

/// With `autotests = false` a test file no module names is never built: each file beside this
/// one must be named here.
#[test]
fn every_test_file_is_a_module() {
    let main = include_str!("main.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(&dir).expect("read the tests directory") {
        let path = entry.expect("a directory entry").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && name != "main" {
            assert!(
                main.contains(&format!("\nmod {name};\n")),
                "no `mod {name};`"
            );
        }
    }
}
