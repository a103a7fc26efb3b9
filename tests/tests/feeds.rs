//! `sinkhole import` and `sinkhole export` on real pinned maps, and the export served by a
//! real rbldnsd: what one trap blocked is listed in its zone, nothing else is.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use sinkhole_tests::dns::{dns_query, start_rbldnsd};
use sinkhole_tests::netns::PinDir;
use sinkhole_tests::{kernel_tests_allowed, sinkhole, sinkhole_ok, temp_dir};

const A: u16 = 1;
const TXT: u16 = 16;

/// A DROP list as Spamhaus writes it, with one entry inside `xdp.allow` and a bad line 7.
const DROP: &str = "; Spamhaus DROP List 2026/11/26 - (c) 2026 The Spamhaus Project SLU
; Last-Modified: Wed, 26 Nov 2026 12:00:00 GMT
198.51.100.0/24 ; SBL100
203.0.113.0/25 ; SBL101
192.0.2.128/26 ; SBL102

203.0.113.300/32 ; SBL103
2001:db8:bad::/48 ; SBL104
";

fn write_config(dir: &Path, pins: &Path) -> String {
    let path = dir.join("sinkhole.toml");
    fs::write(
        &path,
        format!(
            "[xdp]\npin_dir = \"{}\"\nallow = [\"127.0.0.0/8\", \"::1/128\", \"192.0.2.128/25\"]\n",
            pins.display()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The DNSBL name of `ip` in `zone` (reversed octets, or nibbles for IPv6).
fn listing_name(ip: IpAddr, zone: &str) -> String {
    let labels: Vec<String> = match ip {
        IpAddr::V4(a) => a.octets().iter().rev().map(u8::to_string).collect(),
        IpAddr::V6(a) => a
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [b & 0xf, b >> 4])
            .map(|n| format!("{n:x}"))
            .collect(),
    };
    format!("{}.{zone}", labels.join("."))
}

/// Asks `server`; returns the rcode, the answer count and the whole response.
fn ask(server: SocketAddr, name: &str, qtype: u16) -> (u8, u16, Vec<u8>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for attempt in 0..3u16 {
        socket
            .send_to(&dns_query(0x4000 + attempt, name, qtype), server)
            .unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let response = buf[..n].to_vec();
            let rcode = response[3] & 0x0f;
            let answers = u16::from_be_bytes([response[6], response[7]]);
            return (rcode, answers, response);
        }
    }
    panic!("no answer from {server} for {name}")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn import_drop_and_plain_lists_then_serve_the_export_with_rbldnsd() {
    if !kernel_tests_allowed("import_drop_and_plain_lists_then_serve_the_export_with_rbldnsd") {
        return;
    }
    let pins = PinDir::new("feed");
    let dir = temp_dir("feeds");
    let config = write_config(dir.path(), pins.path());
    let drop = dir.path().join("drop.txt");
    fs::write(&drop, DROP).unwrap();

    // The bad line is named; the good ones load anyway, and the exit says it failed.
    let out = sinkhole(&[
        "import",
        drop.to_str().unwrap(),
        "--format",
        "drop",
        "--config",
        &config,
    ])
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:7: `203.0.113.300/32`", drop.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("the good ones were loaded: 3 added, 1 skipped (allow-listed), 1 bad"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        2,
        "one line per bad line, one summary: {stderr}"
    );

    let plain = dir.path().join("seen.txt");
    fs::write(
        &plain,
        "# traps hit today\n192.0.2.7\n2001:db8:1::5 # twice\n",
    )
    .unwrap();
    let out = sinkhole_ok(&[
        "import",
        plain.to_str().unwrap(),
        "--format",
        "plain",
        "--ttl",
        "1h",
        "--reason",
        "fleet:trap-2",
        "--config",
        &config,
    ])
    .unwrap();
    assert!(
        out.contains("2 added, 0 skipped (allow-listed), 0 bad"),
        "{out}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&sinkhole_ok(&["list", "--json", "--config", &config]).unwrap())
            .unwrap();
    let mut listed: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["prefix"].as_str().unwrap().to_string(),
                b["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let want = [
        ("192.0.2.7/32", "fleet:trap-2"),
        ("198.51.100.0/24", "drop:SBL100"),
        ("2001:db8:1::5/128", "fleet:trap-2"),
        ("2001:db8:bad::/48", "drop:SBL104"),
        ("203.0.113.0/25", "drop:SBL101"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    assert_eq!(listed, want);

    // One family to stdout.
    let v6 = sinkhole_ok(&[
        "export", "--format", "rbldnsd", "--family", "ipv6", "--config", &config,
    ])
    .unwrap();
    assert!(
        v6.contains("\n2001:db8:bad::/48 :127.0.0.2:drop:SBL104\n"),
        "{v6}"
    );
    assert!(!v6.contains("198.51.100.0"), "{v6}");
    // Leaving out blocks by reason (a fleet shares only first-hand ones).
    let v6 = sinkhole_ok(&[
        "export",
        "--family",
        "ipv6",
        "--skip-reason",
        "fleet:",
        "--config",
        &config,
    ])
    .unwrap();
    assert!(v6.contains("2001:db8:bad::/48"), "{v6}");
    assert!(!v6.contains("2001:db8:1::5"), "{v6}");

    // Both files, served by rbldnsd as one zone.
    let out_dir = dir.path().join("zone");
    let said = sinkhole_ok(&[
        "export",
        "--format",
        "rbldnsd",
        "--output",
        out_dir.to_str().unwrap(),
        "--zone",
        "bl.test",
        "--config",
        &config,
    ])
    .unwrap();
    assert!(
        said.contains("bl.test:ip4set:blocks4 bl.test:ip6trie:blocks6"),
        "{said}"
    );
    let v4 = fs::read_to_string(out_dir.join("blocks4")).unwrap();
    let v6 = fs::read_to_string(out_dir.join("blocks6")).unwrap();
    let rbldnsd =
        start_rbldnsd(&[("bl.test", "ip4set", &v4), ("bl.test", "ip6trie", &v6)]).unwrap();
    let listed = [
        ("198.51.100.77", "drop:SBL100"),
        ("203.0.113.1", "drop:SBL101"),
        ("192.0.2.7", "fleet:trap-2"),
        ("2001:db8:bad::1", "drop:SBL104"),
        ("2001:db8:1::5", "fleet:trap-2"),
    ];
    for (ip, reason) in listed {
        let name = listing_name(ip.parse().unwrap(), "bl.test");
        let (rcode, answers, response) = ask(rbldnsd.addr, &name, A);
        assert_eq!((rcode, answers), (0, 1), "{ip} should be listed");
        assert!(response.ends_with(&[127, 0, 0, 2]), "{ip}: A 127.0.0.2");
        let (_, _, response) = ask(rbldnsd.addr, &name, TXT);
        assert!(contains(&response, reason), "{ip}: TXT {reason}");
    }
    // Not blocked, allow-listed (never imported), or only nearby: not listed.
    for ip in [
        "203.0.113.200",
        "192.0.2.130",
        "192.0.2.8",
        "2001:db8:bbb::1",
        "2001:db8:1::6",
    ] {
        let name = listing_name(ip.parse().unwrap(), "bl.test");
        let (rcode, answers, _) = ask(rbldnsd.addr, &name, A);
        assert_eq!(
            (rcode, answers),
            (3, 0),
            "{ip} should not be listed (NXDOMAIN)"
        );
    }
}

#[test]
fn import_refuses_a_missing_file_and_a_bad_format() {
    let dir = temp_dir("feeds-bad");
    let missing = dir.path().join("missing.txt");
    let out = sinkhole(&["import", missing.to_str().unwrap(), "--format", "drop"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read") && stderr.contains("missing.txt"),
        "{stderr}"
    );
    let out = sinkhole(&["import", missing.to_str().unwrap(), "--format", "csv"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("csv"));
}

/// Spamhaus's JSON-lines DROP (`drop_v4.json`, `drop_v6.json`): one record per line, a metadata
/// line last; here with a record inside `xdp.allow` and a bad record on line 4.
const DROP_JSON_V4: &str = r#"{"cidr":"198.51.100.0/24","sblid":"SBL200","rir":"ripencc"}
{"cidr":"203.0.113.0/25","sblid":"SBL201","rir":"arin"}
{"cidr":"192.0.2.128/26","sblid":"SBL202","rir":"apnic"}
{"sblid":"SBL203","rir":"lacnic"}
{"type":"metadata","timestamp":1764892800,"size":228,"records":4,"copyright":"(c) 2026 The Spamhaus Project SLU","terms":"https://www.spamhaus.org/drop/terms/"}
"#;
const DROP_JSON_V6: &str = r#"{"cidr":"2001:db8:bad::/48","sblid":"SBL204","rir":"ripencc"}
{"type":"metadata","timestamp":1764892800,"size":62,"records":1}
"#;

#[test]
fn import_reads_drop_as_json_lines_keeping_the_sbl_id() {
    if !kernel_tests_allowed("import_reads_drop_as_json_lines_keeping_the_sbl_id") {
        return;
    }
    let pins = PinDir::new("dropjson");
    let dir = temp_dir("feeds-json");
    let config = write_config(dir.path(), pins.path());
    let v4 = dir.path().join("drop_v4.json");
    let v6 = dir.path().join("drop_v6.json");
    fs::write(&v4, DROP_JSON_V4).unwrap();
    fs::write(&v6, DROP_JSON_V6).unwrap();

    let out = sinkhole(&[
        "import",
        v4.to_str().unwrap(),
        "--format",
        "drop",
        "--config",
        &config,
    ])
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:4: a DROP JSON record with no `cidr`",
            v4.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("the good ones were loaded: 2 added, 1 skipped (allow-listed), 1 bad"),
        "{stderr}"
    );
    let out = sinkhole_ok(&[
        "import",
        v6.to_str().unwrap(),
        "--format",
        "drop",
        "--config",
        &config,
    ])
    .unwrap();
    assert!(
        out.contains("1 added, 0 skipped (allow-listed), 0 bad"),
        "{out}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&sinkhole_ok(&["list", "--json", "--config", &config]).unwrap())
            .unwrap();
    let mut listed: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["prefix"].as_str().unwrap(), b["reason"].as_str().unwrap()))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("198.51.100.0/24", "drop:SBL200"),
            ("2001:db8:bad::/48", "drop:SBL204"),
            ("203.0.113.0/25", "drop:SBL201"),
        ]
    );
}
