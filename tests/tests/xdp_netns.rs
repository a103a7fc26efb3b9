//! The real `sinkhole` binary with its XDP program on one end of a veth pair between two
//! network namespaces: TCP connects from the other end succeed, are dropped once the client is
//! blocked with `sinkhole block` (the entry's drop counter and `stats` rising), and succeed
//! again after `unblock`, after a block's TTL, and while the daemon is stopped; a restarted
//! daemon reuses the pinned blocks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sinkhole_tests::netns::{NetNs, PinDir, VethPair, spawn_xdp_daemon};
use sinkhole_tests::{entry_drops, free_port, kernel_tests_allowed, sinkhole_bin, sinkhole_ok};

const SERVER_V4: &str = "198.51.100.1";
const CLIENT_V4: &str = "198.51.100.2";
const SERVER_V6: &str = "2001:db8::1";
const CLIENT_V6: &str = "2001:db8::2";

/// Accepts and closes connections on `addr` inside `ns` for as long as the test runs.
fn serve(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = ns.run_in(|| TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    Ok(())
}

fn connects(ns: &NetNs, addr: SocketAddr) -> bool {
    ns.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_ok())
        .expect("enter the client namespace")
}

fn stats(config: &Path) -> Value {
    let text = sinkhole_ok(&["stats", "--json", "--config", config.to_str().unwrap()]).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `sinkhole stats --json` run in `ns`, where the configured interface is, and what it says of
/// that interface.
fn interface_in(ns: &NetNs, config: &Path) -> Value {
    let out = ns
        .command(sinkhole_bin())
        .args(["stats", "-j", "-c"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["interfaces"][0].clone()
}

#[test]
fn blocked_clients_cannot_connect_until_unblocked_or_expired() -> anyhow::Result<()> {
    if !kernel_tests_allowed("blocked_clients_cannot_connect_until_unblocked_or_expired") {
        return Ok(());
    }
    let pair = VethPair::new(
        &[&format!("{SERVER_V4}/24"), &format!("{SERVER_V6}/64")],
        &[&format!("{CLIENT_V4}/24"), &format!("{CLIENT_V6}/64")],
    )?;
    let pins = PinDir::new("n");
    let storage = std::env::temp_dir().join(sinkhole_tests::unique_name("st"));
    // The daemon's own SMTP port (for `sinkhole run`) and the port this test serves itself;
    // both are in scope.
    let (smtp_port, test_port, metrics_port) = (free_port(), free_port(), free_port());
    let config = storage.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            r#"
[smtp]
listen = ["{SERVER_V4}:{smtp_port}", "[{SERVER_V6}]:{smtp_port}"]
[storage]
dir = "{storage}"
[xdp]
interfaces = ["{iface}"]
ports = [{smtp_port}, {test_port}]
pin_dir = "{pins}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
"#,
            storage = storage.display(),
            iface = pair.near_if,
            pins = pins.path().display(),
        ),
    )?;
    let cfg = config.to_str().unwrap();
    let v4: SocketAddr = format!("{SERVER_V4}:{test_port}").parse()?;
    let v6: SocketAddr = format!("[{SERVER_V6}]:{test_port}").parse()?;
    serve(&pair.near, v4)?;
    serve(&pair.near, v6)?;

    let daemon = spawn_xdp_daemon(&pair.near, &config)?;
    let attached = interface_in(&pair.near, &config);
    assert_eq!(attached["interface"], pair.near_if.as_str(), "{attached}");
    assert_eq!(attached["attached"], true, "{attached}");
    assert_eq!(attached["sinkhole"], true, "{attached}");
    // veth has native XDP: `auto` attaches in the driver.
    assert_eq!(attached["mode"], "driver", "{attached}");
    assert!(attached["program_id"].as_u64().unwrap() > 0, "{attached}");
    let scrape = pair.near.run_in(|| {
        let mut metrics = TcpStream::connect(("127.0.0.1", metrics_port))?;
        metrics.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        metrics.read_to_string(&mut body)?;
        Ok::<_, std::io::Error>(body)
    })??;
    let series = format!(
        "sinkhole_xdp_attached{{interface=\"{}\",mode=\"driver\"}} 1",
        pair.near_if
    );
    assert!(scrape.contains(&series), "{series} in\n{scrape}");
    assert!(connects(&pair.far, v4), "v4 before any block");
    assert!(connects(&pair.far, v6), "v6 before any block");

    sinkhole_ok(&["block", CLIENT_V4, "--reason", "netns", "--config", cfg])?;
    sinkhole_ok(&["block", CLIENT_V6, "--config", cfg])?;
    assert!(!connects(&pair.far, v4), "v4 blocked");
    assert!(!connects(&pair.far, v6), "v6 blocked");
    assert!(entry_drops(&config, &format!("{CLIENT_V4}/32")) >= 1);
    assert!(entry_drops(&config, &format!("{CLIENT_V6}/128")) >= 1);
    let s = stats(&config);
    assert!(s["ipv4"]["dropped"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["ipv6"]["dropped"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["blocked_entries"], 2, "{s}");
    let dropped_before = s["packets"]["dropped"].as_u64().unwrap();
    assert!(!connects(&pair.far, v4));
    assert!(stats(&config)["packets"]["dropped"].as_u64().unwrap() > dropped_before);

    sinkhole_ok(&["unblock", CLIENT_V4, "--config", cfg])?;
    sinkhole_ok(&["unblock", CLIENT_V6, "--config", cfg])?;
    assert!(connects(&pair.far, v4), "v4 after unblock");
    assert!(connects(&pair.far, v6), "v6 after unblock");

    // A CIDR block with a TTL: dropped, then passes once it expires.
    sinkhole_ok(&["block", "198.51.100.0/25", "--ttl", "3s", "--config", cfg])?;
    sinkhole_ok(&["block", "2001:db8::/64", "--ttl", "3s", "--config", cfg])?;
    let blocked_at = std::time::Instant::now();
    assert!(!connects(&pair.far, v4), "v4 inside a blocked /25");
    assert!(!connects(&pair.far, v6), "v6 inside a blocked /64");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(blocked_at.elapsed()));
    assert!(connects(&pair.far, v4), "v4 after the TTL");
    assert!(connects(&pair.far, v6), "v6 after the TTL");

    // Stopping the daemon detaches the program but keeps the blocks; a new daemon reuses them.
    sinkhole_ok(&["block", CLIENT_V4, "--config", cfg])?;
    assert!(!connects(&pair.far, v4));
    assert!(daemon.terminate()?.success());
    assert_eq!(interface_in(&pair.near, &config)["attached"], false);
    assert!(connects(&pair.far, v4), "v4 with the daemon stopped");
    let _daemon = spawn_xdp_daemon(&pair.near, &config)?;
    assert!(
        !connects(&pair.far, v4),
        "v4 blocked again by the restarted daemon"
    );
    assert!(connects(&pair.far, v6));

    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_dir_all(&storage);
    Ok(())
}
