//! The seed operator's campaign replayed in all its variants, with a second campaign and other
//! traffic (`sinkhole_tests::replay`), against the real daemon with a greet wait and DNSBL
//! zones served by rbldnsd: `sinkhole campaigns` shows two campaigns, each with at least 90 % of
//! its own sessions and none of the other's, its variants under it and why; the daemon alerted
//! on each once and counts them in `/metrics`; the URL hosts exported with
//! `export --format rbldnsd-uribl` are served by rbldnsd; the `--html` page renders in
//! headless Chromium.

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sinkhole_tests::daemon::Daemon;
use sinkhole_tests::dns::{dns_query, start_rbldnsd};
use sinkhole_tests::replay::{Bot, Origin, play, replay};
use sinkhole_tests::{free_port, shared, sinkhole_ok};

#[test]
fn two_campaigns_in_all_their_variants_among_other_traffic() {
    let _shared = shared();
    let (bots, listings) = replay();
    let datasets = listings.datasets();
    let datasets: Vec<(&str, &str, &str)> = datasets
        .iter()
        .map(|(zone, kind, lines)| (*zone, *kind, lines.as_str()))
        .collect();
    let rbl = start_rbldnsd(&datasets).expect("rbldnsd");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let rest = format!(
        "[dnsbl]\nnameservers = [\"{}\"]\nreject_threshold = 1\nblock_threshold = 100\n\
         [[dnsbl.zone]]\nname = \"pbl.test\"\n[[dnsbl.zone]]\nname = \"xbl.test\"\n\
         [[dnsbl.zone]]\nname = \"css.test\"\n\
         [campaign]\nalert_sessions = 20\nalert_window = \"1h\"\n\
         [metrics]\nlisten = \"{metrics}\"\n",
        rbl.addr
    );
    let mut daemon = Daemon::start_with_tables("greet_wait = \"300ms\"", "", &rest);
    // Eight bots at a time, as a small botnet would come.
    for wave in bots.chunks(8) {
        std::thread::scope(|scope| {
            for bot in wave {
                let addr = daemon.addr;
                scope.spawn(move || {
                    play(addr, bot).unwrap_or_else(|e| panic!("{}: {e}", bot.source))
                });
            }
        });
    }
    let sessions = daemon.wait_sessions(bots.len());
    assert_eq!(sessions.len(), bots.len());
    let origin: HashMap<String, Origin> = bots
        .iter()
        .map(|b| (b.source.to_string(), b.origin))
        .collect();
    for s in &sessions {
        let signatures: Vec<&str> = s["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let from = origin[s["client_ip"].as_str().unwrap()];
        // The greet wait caught every bot of the second campaign, and no one else.
        assert_eq!(
            signatures.contains(&"pregreet"),
            from == Origin::Second,
            "{s}"
        );
        assert!(s.get("syn").is_none(), "no XDP, yet a SYN fingerprint: {s}");
    }

    let config = daemon.config_path();
    let config = config.to_str().unwrap();
    let report = campaigns_json(config);
    assert_eq!(report.len(), 2, "{report:#?}");
    for (expected, other) in [
        (Origin::Seed, Origin::Second),
        (Origin::Second, Origin::Seed),
    ] {
        let own = bots.iter().filter(|b| b.origin == expected).count();
        let campaign = report
            .iter()
            .max_by_key(|c| members(c, &bots, expected))
            .unwrap();
        let held = members(campaign, &bots, expected);
        assert!(
            held * 10 >= own * 9,
            "{expected:?}: {held} of {own} in one campaign: {campaign:#}"
        );
        assert_eq!(members(campaign, &bots, other), 0, "{campaign:#}");
        assert_eq!(members(campaign, &bots, Origin::Other), 0, "{campaign:#}");
    }
    let seed = &report[0];
    assert_eq!(seed["sessions"], 37, "{seed:#}");
    assert_eq!(seed["signatures"][0], "mail-from-eq-rcpt-to", "{seed:#}");
    // Its variants: by HELO kind and by whether a DNSBL listed it (and it then ran ahead).
    let variants = seed["variants"].as_array().unwrap();
    assert!(variants.len() >= 4, "{seed:#}");
    let key = &seed["grouped_by"][0];
    assert_eq!(key["feature"], "key");
    assert_eq!(
        key["value"],
        "behaviours=mail-from-eq-rcpt-to+pipelining sender=eq-rcpt rcpts=1"
    );
    assert_eq!(key["sessions"], 37);
    // The seven messages, one template with names and tokens changed, are one body.
    let bodies = |c: &Value| -> Vec<u64> {
        c["grouped_by"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["feature"] == "body")
            .map(|g| g["sessions"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(bodies(seed), [7], "{seed:#}");
    assert_eq!(
        seed["url_hosts"][0]["name"], "pharma-seed.example",
        "{seed:#}"
    );
    assert_eq!(seed["url_hosts"][0]["count"], 7, "{seed:#}");
    assert_eq!(seed["messages"], 7);
    assert_eq!(
        seed["dnsbl"],
        serde_json::json!({"pbl.test": 18, "xbl.test": 6, "css.test": 6})
    );
    let second = &report[1];
    assert_eq!(second["sessions"], 24, "{second:#}");
    assert_eq!(second["signatures"], serde_json::json!(["pregreet"]));
    assert_eq!(second["url_hosts"][0]["name"], "loans-b.example");
    assert_eq!(bodies(second), [10], "{second:#}");

    // The daemon said so once per campaign, with the key the report names.
    let stderr = daemon.stderr();
    for campaign in [seed, second] {
        let line = format!(
            "new campaign {}: 20 sessions within 1h",
            campaign["id"].as_str().unwrap()
        );
        assert_eq!(stderr.matches(&line).count(), 1, "{line}: {stderr}");
    }
    let scrape = get_metrics(metrics);
    assert!(
        scrape.contains("\nsinkhole_campaigns_active 2\n"),
        "{scrape}"
    );
    assert!(
        scrape.contains("\nsinkhole_campaign_sessions_total 61\n"),
        "{scrape}"
    );
    daemon.stop();
    // The text report, for docs/campaigns.md's worked example.
    if let Some(path) = std::env::var_os("SINKHOLE_REPLAY_REPORT") {
        std::fs::write(
            path,
            sinkhole_ok(&["campaigns", "--config", config]).unwrap(),
        )
        .unwrap();
    }

    uribl_is_served(config);
    html_renders(config);
}

/// `sinkhole campaigns --json` listing every client.
fn campaigns_json(config: &str) -> Vec<Value> {
    let out = sinkhole_ok(&["campaigns", "--json", "--top", "1000", "--config", config]).unwrap();
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Sessions of `campaign` from bots of `origin` (each bot has an address of its own).
fn members(campaign: &Value, bots: &[Bot], origin: Origin) -> usize {
    let of_origin: HashSet<String> = bots
        .iter()
        .filter(|b| b.origin == origin)
        .map(|b| b.source.to_string())
        .collect();
    campaign["top_clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| of_origin.contains(c["name"].as_str().unwrap()))
        .map(|c| c["count"].as_u64().unwrap() as usize)
        .sum()
}

fn get_metrics(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The URL hosts of campaigns of 10 sessions or more, served by rbldnsd as a URIBL.
fn uribl_is_served(config: &str) {
    let dataset = sinkhole_ok(&[
        "export",
        "--format",
        "rbldnsd-uribl",
        "--min-sessions",
        "10",
        "--config",
        config,
    ])
    .unwrap();
    let rbl = start_rbldnsd(&[("uribl.test", "dnset", &dataset)]).expect("rbldnsd");
    assert_eq!(
        query_a(rbl.addr, "pharma-seed.example.uribl.test"),
        Some(Ipv4Addr::new(127, 0, 0, 2)),
        "{dataset}"
    );
    assert_eq!(
        query_a(rbl.addr, "loans-b.example.uribl.test"),
        Some(Ipv4Addr::new(127, 0, 0, 2))
    );
    // A host of the other traffic, in no campaign.
    assert_eq!(
        query_a(rbl.addr, "site10.example.uribl.test"),
        None,
        "{dataset}"
    );
}

/// The first A record `server` answers for `name`.
fn query_a(server: SocketAddr, name: &str) -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(&dns_query(7, name, 1), server).unwrap();
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).unwrap();
    let packet = &buf[..n];
    if packet[3] & 0x0f != 0 || u16::from_be_bytes([packet[6], packet[7]]) == 0 {
        return None;
    }
    // Past the header and the question (name, type, class), the first answer: a name (a
    // pointer or labels), type, class, TTL, length, then the address.
    let mut at = 12;
    while packet[at] != 0 {
        at += usize::from(packet[at]) + 1;
    }
    at += 5;
    at += if packet[at] & 0xc0 == 0xc0 {
        2
    } else {
        name.len() + 2
    };
    let rdata = &packet[at + 10..at + 14];
    Some(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))
}

/// The `--html` page: self-contained, its SVG parses, and Chromium draws something.
fn html_renders(config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("campaigns.html");
    sinkhole_ok(&[
        "campaigns",
        "--html",
        page.to_str().unwrap(),
        "--config",
        config,
    ])
    .unwrap();
    let text = std::fs::read_to_string(&page).unwrap();
    assert!(text.starts_with("<!DOCTYPE html>"));
    for fetch in ["src=", "href=", "@import", "url("] {
        assert!(!text.contains(fetch), "the page fetches something: {fetch}");
    }
    let mut svgs = 0;
    for part in text.split("<svg").skip(1) {
        let end = part.find("</svg>").expect("a closed svg") + "</svg>".len();
        let svg = format!("<svg{}", &part[..end]);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
        assert!(doc.descendants().any(|n| n.has_tag_name("rect")), "{svg}");
        svgs += 1;
    }
    assert_eq!(svgs, 2, "a timeline per campaign");
    assert!(text.contains("pharma-seed.example") && text.contains("loans-b.example"));

    let shot = dir.path().join("campaigns.png");
    let status = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg("--window-size=1024,1400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (installed by `cargo xtask setup`)");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let pixels = &pixels[..info.buffer_size()];
    let step = info.color_type.samples();
    let red = pixels
        .chunks(step)
        .filter(|p| p[0] > 150 && p[1] < 100 && p[2] < 100)
        .count();
    let dark = pixels
        .chunks(step)
        .filter(|p| p[0] < 100 && p[1] < 100 && p[2] < 100)
        .count();
    // The timeline bars (#c0392b) and text, on white.
    assert!(red > 200, "no bars in the screenshot ({red} red pixels)");
    assert!(
        dark > 2000,
        "no text in the screenshot ({dark} dark pixels)"
    );
}
