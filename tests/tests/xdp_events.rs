//! The XDP program's own rare events reach the daemon's log through aya-log's ring buffer:
//! with the program attached to the loopback of a namespace of the test's, a burst of packets
//! whose TCP header is cut short is counted whole, and the first of each second is logged under
//! `sinkhole::xdp`, no more.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use sinkhole_tests::frames::Frame;
use sinkhole_tests::netns::{NetNs, PinDir, spawn_xdp_daemon_logging};
use sinkhole_tests::{kernel_tests_allowed, sinkhole_ok, temp_dir};
use socket2::{Domain, Protocol, Socket, Type};

const PORT: u16 = 2525;
const BURST: u64 = 200;
/// `IPPROTO_RAW`: a raw socket whose packets carry their own IPv4 header.
const IPPROTO_RAW: i32 = 255;

/// An IPv4 packet from 127.0.0.1 to the trap's port on 127.0.0.1 whose TCP header stops after
/// 10 of its 20 bytes.
fn truncated_syn() -> Vec<u8> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut frame = Frame::tcp(loopback, PORT);
    frame.destination = loopback;
    let bytes = frame.bytes();
    // Without the Ethernet header (the loopback device adds one): IPv4 header, then 10 bytes.
    bytes[14..14 + 20 + 10].to_vec()
}

#[test]
fn the_first_malformed_packet_of_a_second_reaches_the_daemons_log() -> anyhow::Result<()> {
    if !kernel_tests_allowed("the_first_malformed_packet_of_a_second_reaches_the_daemons_log") {
        return Ok(());
    }
    let ns = NetNs::new("e")?;
    let pins = PinDir::new("e");
    let dir = temp_dir("xdp-events");
    let config = dir.path().join("sinkhole.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = [\"127.0.0.1:{PORT}\"]\nhostname = \"sinkhole.test\"\n\
             [storage]\ndir = \"{}\"\n\
             [xdp]\ninterfaces = [\"lo\"]\nmode = \"skb\"\npin_dir = \"{}\"\n\
             [dnsbl]\nnameservers = [\"127.0.0.1:9\"]\nzone = []\n",
            dir.path().join("data").display(),
            pins.path().display()
        ),
    )?;
    let mut daemon = spawn_xdp_daemon_logging(&ns, &config, "info,sinkhole::xdp=debug")?;

    let packet = truncated_syn();
    let started = Instant::now();
    ns.run_in(|| -> anyhow::Result<()> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))?;
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into();
        for _ in 0..BURST {
            socket.send_to(&packet, &to)?;
        }
        Ok(())
    })??;
    let seconds_spanned = started.elapsed().as_secs() + 2;

    daemon.wait_for_stderr(
        "sinkhole::xdp: malformed IPv4 packet of 44 bytes on interface 1 (passed",
        Duration::from_secs(10),
    )?;
    let logged = 1 + daemon
        .stderr_for(Duration::from_millis(1500))
        .into_iter()
        .filter(|line| line.contains("malformed IPv4 packet"))
        .count() as u64;
    // The first of a second per CPU at most (CPUs racing on the same second can both log).
    let cpus = std::thread::available_parallelism()?.get() as u64;
    assert!(
        logged <= seconds_spanned * cpus,
        "{logged} lines for {BURST} malformed packets within {seconds_spanned} s on {cpus} CPUs"
    );

    let stats: Value = serde_json::from_str(&sinkhole_ok(&[
        "stats",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ])?)?;
    assert!(
        stats["malformed"].as_u64().unwrap() >= BURST,
        "every one is counted: {stats}"
    );
    Ok(())
}
