//! Restarts: the real `sinkhole run` with XDP on one end of a veth pair. A blocked source and
//! an unblocked one keep trying TCP connects to the daemon's SMTP port while the daemon is
//! stopped and started again: the pinned block, its drop counter and (once the new daemon is
//! up) the attached program stay in force, and the blocked source never gets a connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sinkhole_tests::netns::{PinDir, VethPair, spawn_xdp_daemon};
use sinkhole_tests::{entry_drops, free_port, kernel_tests_allowed, sinkhole_ok};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const SERVER: &str = "198.51.100.1";
const BLOCKED: &str = "198.51.100.2";
const UNBLOCKED: &str = "198.51.100.3";

/// A TCP connect from `from` to `to` within 300 ms.
fn connects(from: IpAddr, to: SocketAddr) -> bool {
    let Ok(socket) = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)) else {
        return false;
    };
    socket
        .bind(&SockAddr::from(SocketAddr::new(from, 0)))
        .is_ok()
        && socket
            .connect_timeout(&SockAddr::from(to), Duration::from_millis(300))
            .is_ok()
}

/// Connects made in one phase of the test. (An unblocked connect counted as "down" can come
/// in the moment between the new daemon's listen and its log line saying so.)
#[derive(Default)]
struct Tally {
    blocked: AtomicU64,
    unblocked: AtomicU64,
    attempts: AtomicU64,
}

#[test]
fn blocks_counters_and_the_program_survive_a_daemon_restart() -> anyhow::Result<()> {
    if !kernel_tests_allowed("blocks_counters_and_the_program_survive_a_daemon_restart") {
        return Ok(());
    }
    let pair = VethPair::new(
        &[&format!("{SERVER}/24")],
        &[&format!("{BLOCKED}/24"), &format!("{UNBLOCKED}/24")],
    )?;
    let pins = PinDir::new("r");
    let storage = std::env::temp_dir().join(sinkhole_tests::unique_name("rs"));
    let port = free_port();
    let config = storage.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = [\"{SERVER}:{port}\"]\n[storage]\ndir = \"{}\"\n\
             [xdp]\ninterfaces = [\"{}\"]\npin_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            storage.display(),
            pair.near_if,
            pins.path().display(),
        ),
    )?;
    let cfg = config.to_str().unwrap();
    let server: SocketAddr = format!("{SERVER}:{port}").parse()?;
    let (blocked, unblocked): (IpAddr, IpAddr) = (BLOCKED.parse()?, UNBLOCKED.parse()?);

    let mut daemon = spawn_xdp_daemon(&pair.near, &config)?;
    sinkhole_ok(&[
        "block",
        BLOCKED,
        "--reason",
        "restart test",
        "--config",
        cfg,
    ])?;
    let prefix = format!("{BLOCKED}/32");

    // Phases: 0 before the stop, 1 while the daemon is down, 2 after the restart.
    let tallies: [Tally; 3] = Default::default();
    let phase = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (drops_before, drops_restarted, drops_after, down_for) = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            pair.far.run_in(|| {
                while !stop.load(Ordering::Relaxed) {
                    let tally = &tallies[phase.load(Ordering::Relaxed) as usize];
                    tally.attempts.fetch_add(1, Ordering::Relaxed);
                    if connects(blocked, server) {
                        tally.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    if connects(unblocked, server) {
                        tally.unblocked.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        });
        std::thread::sleep(Duration::from_millis(1500));
        let drops_before = entry_drops(&config, &prefix);
        daemon.stop();
        // From here until the new daemon listens, nothing listens on the port.
        phase.store(1, Ordering::Relaxed);
        let down = Instant::now();
        std::thread::sleep(Duration::from_millis(1000));
        daemon = spawn_xdp_daemon(&pair.near, &config).expect("restart the daemon");
        let down_for = down.elapsed();
        phase.store(2, Ordering::Relaxed);
        let drops_restarted = entry_drops(&config, &prefix);
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap().unwrap();
        let drops_after = entry_drops(&config, &prefix);
        (drops_before, drops_restarted, drops_after, down_for)
    });
    let counts: Vec<[u64; 3]> = tallies
        .iter()
        .map(|t| {
            [
                t.attempts.load(Ordering::Relaxed),
                t.blocked.load(Ordering::Relaxed),
                t.unblocked.load(Ordering::Relaxed),
            ]
        })
        .collect();
    eprintln!(
        "restart: [attempts, blocked connects, unblocked connects] before {:?}, down {:?} \
         ({down_for:?}), after {:?}; drops of {prefix}: {drops_before} before the stop, \
         {drops_restarted} just after the restart, {drops_after} at the end",
        counts[0], counts[1], counts[2]
    );
    for (name, c) in ["before", "down", "after"].iter().zip(&counts) {
        assert!(c[0] > 0, "no attempts {name}");
        assert_eq!(c[1], 0, "the blocked source connected {name} the restart");
    }
    assert!(
        counts[0][2] > 0,
        "the unblocked source never connected before"
    );
    assert!(
        counts[2][2] > 0,
        "the unblocked source never connected after"
    );
    // The pinned entry kept its counter, and the restarted program kept counting.
    assert!(drops_before > 0);
    assert!(drops_restarted >= drops_before, "the counter was reset");
    assert!(drops_after > drops_restarted, "no drops after the restart");
    let _ = daemon.terminate();
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_dir_all(&storage);
    Ok(())
}
