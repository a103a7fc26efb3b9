//! The campaign replay, reproducible: the bots of two campaigns and other traffic, played with
//! real sockets from many loopback addresses against a running daemon
//! (`tests/tests/campaign_variants.rs`), and a synthetic session log of any size in the same
//! shapes for the benchmark (`cargo xtask bench campaigns`). docs/campaigns.md walks through the
//! first campaign, the seed operator's.
//!
//! - **The seed campaign** (37 bots, 127.1.0.10-46): `MAIL FROM` equal to `RCPT TO` at the
//!   trap's own domain, everything after EHLO in one write. 18 name themselves like an rDNS
//!   name and are in `pbl.test`, 12 say `EHLO [a.b.c.d]` and are in `xbl.test` or `css.test`,
//!   4 and 3 of each HELO kind are listed nowhere: they reach DATA with a pharmacy URL.
//! - **The second campaign** (24 bots, 127.2.0.10-33): talks before the banner's last line
//!   (EHLO 50 ms after connecting, banner unread), then one command per reply, a sender of its
//!   own domain; 14 are in `xbl.test`, the others reach DATA with a loans URL.
//! - **Other traffic**: senders with messages of their own (swaks, 127.3.0.10-17) and scanners
//!   that say EHLO and QUIT (127.3.0.30-35).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Which traffic a bot belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Seed,
    Second,
    Other,
}

/// How a bot talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Banner, EHLO; then MAIL, RCPT, DATA, the body and QUIT in one write (the seed's bots).
    Pipelining,
    /// EHLO this long after connecting, the banner unread; then one command per reply.
    Pregreet(Duration),
    /// A real client: `swaks`, waiting for every reply.
    Swaks,
    /// Banner, EHLO, QUIT.
    Scanner,
}

#[derive(Clone, Debug)]
pub struct Bot {
    pub origin: Origin,
    pub source: Ipv4Addr,
    pub style: Style,
    pub helo: String,
    pub mail_from: String,
    pub rcpt: String,
    /// The message (headers, empty line, body), CRLF line ends.
    pub message: String,
    /// IP TTL and TCP MSS to open the connection with (a stack of another kind).
    pub ttl: Option<u32>,
    pub mss: Option<u32>,
}

/// The DNSBL zones of the replay and who is listed in each.
pub struct Listings {
    pub zones: Vec<(&'static str, Vec<Ipv4Addr>)>,
}

impl Listings {
    /// rbldnsd `ip4set` datasets: (zone, `ip4set`, lines).
    pub fn datasets(&self) -> Vec<(&'static str, &'static str, String)> {
        self.zones
            .iter()
            .map(|(zone, ips)| {
                let mut lines = String::from(":127.0.0.2:listed\n");
                for ip in ips {
                    let _ = writeln!(lines, "{ip}");
                }
                (*zone, "ip4set", lines)
            })
            .collect()
    }
}

const PHARMACY: &str = "Subject: Your order is ready\r\n\r\nDear {name}, we ship genuine pharmacy \
    pills worldwide without prescription. Order today at the lowest prices and save up to \
    ninety percent on your next order with free express delivery.\r\nVisit \
    http://pharma-seed.example/shop?ref={token} before the offer ends.\r\n";

const LOANS: &str = "Subject: Approved\r\n\r\nHello {name}, your personal loan of {amount} dollars \
    has been approved without any credit check. Confirm your details within two days to \
    receive the money on your account.\r\nApply at https://loans-b.example/apply?id={token} \
    now.\r\n";

/// Every bot of the replay, in the order they are played, and the DNSBL listings.
pub fn replay() -> (Vec<Bot>, Listings) {
    let names = ["Maria", "John", "Wei", "Olga", "Ahmed", "Lucia", "Tom"];
    let mut bots = Vec::new();
    let (mut pbl, mut xbl, mut css) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..37u8 {
        let source = Ipv4Addr::new(127, 1, 0, 10 + i);
        let rdns_name = i < 18 || (30..34).contains(&i);
        match i {
            0..18 => pbl.push(source),
            18..24 => xbl.push(source),
            24..30 => css.push(source),
            _ => {}
        }
        let trap = format!("trap{}@example.org", i % 5);
        bots.push(Bot {
            origin: Origin::Seed,
            source,
            style: Style::Pipelining,
            helo: if rdns_name {
                format!("dsl-127-1-0-{}.dyn.isp.example", 10 + i)
            } else {
                format!("[{source}]")
            },
            mail_from: trap.clone(),
            rcpt: trap,
            message: PHARMACY
                .replace("{name}", names[usize::from(i) % names.len()])
                .replace(
                    "{token}",
                    &format!("{:x}", u32::from(i).wrapping_mul(2_654_435_761) % 65_536),
                ),
            ttl: None,
            mss: None,
        });
    }
    for i in 0..24u8 {
        let source = Ipv4Addr::new(127, 2, 0, 10 + i);
        if i < 14 {
            xbl.push(source);
        }
        bots.push(Bot {
            origin: Origin::Second,
            source,
            style: Style::Pregreet(Duration::from_millis(50)),
            helo: if i % 2 == 0 {
                source.to_string()
            } else {
                format!("pc{i}.home.example")
            },
            mail_from: format!("offers{i}@mailer-b.example"),
            rcpt: format!("user{}@example.org", i % 6),
            message: LOANS
                .replace("{name}", names[usize::from(i) % names.len()])
                .replace("{amount}", &format!("{}", 1000 + 250 * u32::from(i)))
                .replace("{token}", &format!("{i:04}")),
            ttl: None,
            mss: None,
        });
    }
    let topics = [
        "the minutes of the garden club meeting and the schedule for pruning roses",
        "a firmware update for the office printer fixing paper jams on duplex jobs",
        "the quarterly newsletter about lighthouse restoration on the northern coast",
        "an invitation to the chess tournament with rules for rapid and blitz games",
        "a recipe exchange featuring sourdough starters and fermentation timing tips",
        "the train timetable changes affecting weekend services during track repairs",
        "volunteer shifts for the animal shelter including feeding and cleaning tasks",
        "astronomy night notes on observing Jupiter moons with small refractors",
    ];
    for (i, topic) in topics.iter().enumerate() {
        let n = 10 + i as u8;
        bots.push(Bot {
            origin: Origin::Other,
            source: Ipv4Addr::new(127, 3, 0, n),
            style: Style::Swaks,
            helo: format!("mail.sender{n}.example"),
            mail_from: format!("list@sender{n}.example"),
            rcpt: format!("reader{i}@example.org"),
            message: format!("This is {topic}. See http://site{n}.example/page for more."),
            ttl: None,
            mss: None,
        });
    }
    for n in 30..36u8 {
        bots.push(Bot {
            origin: Origin::Other,
            source: Ipv4Addr::new(127, 3, 0, n),
            style: Style::Scanner,
            helo: format!("scan{n}.example"),
            mail_from: String::new(),
            rcpt: String::new(),
            message: String::new(),
            ttl: None,
            mss: None,
        });
    }
    let listings = Listings {
        zones: vec![("pbl.test", pbl), ("xbl.test", xbl), ("css.test", css)],
    };
    (bots, listings)
}

/// Plays `bot` against the daemon at `addr`; returns the first line of every reply it read.
pub fn play(addr: SocketAddr, bot: &Bot) -> anyhow::Result<Vec<String>> {
    if bot.style == Style::Swaks {
        return swaks(addr, bot);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(IpAddr::V4(bot.source), 0).into())?;
    if let Some(ttl) = bot.ttl {
        socket.set_ttl_v4(ttl)?;
    }
    if let Some(mss) = bot.mss {
        socket.set_tcp_mss(mss)?;
    }
    socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut conn = Conversation {
        reader: BufReader::new(stream),
        replies: Vec::new(),
    };
    match bot.style {
        Style::Pipelining => {
            conn.reply()?;
            conn.send(&format!("EHLO {}\r\n", bot.helo))?;
            conn.reply()?;
            conn.send(&format!(
                "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n{}\r\n.\r\nQUIT\r\n",
                bot.mail_from, bot.rcpt, bot.message
            ))?;
            while conn.reply().is_ok() {}
        }
        Style::Pregreet(after) => {
            std::thread::sleep(after);
            conn.send(&format!("EHLO {}\r\n", bot.helo))?;
            conn.reply()?;
            conn.reply()?;
            conn.say(&format!("MAIL FROM:<{}>\r\n", bot.mail_from))?;
            if conn
                .say(&format!("RCPT TO:<{}>\r\n", bot.rcpt))?
                .starts_with("250")
                && conn.say("DATA\r\n")?.starts_with("354")
            {
                conn.say(&format!("{}\r\n.\r\n", bot.message))?;
            }
            conn.say("QUIT\r\n")?;
        }
        Style::Scanner => {
            conn.reply()?;
            conn.say(&format!("EHLO {}\r\n", bot.helo))?;
            conn.say("QUIT\r\n")?;
        }
        Style::Swaks => unreachable!("played by swaks"),
    }
    Ok(conn.replies)
}

struct Conversation {
    reader: BufReader<TcpStream>,
    replies: Vec<String>,
}

impl Conversation {
    fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.reader.get_mut().write_all(text.as_bytes())
    }

    /// Sends `text` and reads the reply; its first line.
    fn say(&mut self, text: &str) -> anyhow::Result<String> {
        self.send(text)?;
        self.reply()
    }

    /// One whole reply (every line of a multi-line one); its first line.
    fn reply(&mut self) -> anyhow::Result<String> {
        let mut first = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                anyhow::bail!("closed");
            }
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            first.get_or_insert_with(|| line.clone());
            if last {
                let first = first.unwrap_or_default();
                self.replies.push(first.clone());
                return Ok(first);
            }
        }
    }
}

fn swaks(addr: SocketAddr, bot: &Bot) -> anyhow::Result<Vec<String>> {
    let out = Command::new("swaks")
        .args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--local-interface", &bot.source.to_string()])
        .args([
            "--helo",
            &bot.helo,
            "--from",
            &bot.mail_from,
            "--to",
            &bot.rcpt,
        ])
        .args(["--body", &bot.message, "--timeout", "20"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // swaks prints the server's lines after `<-` (`<~` under TLS).
    Ok(text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("<- "))
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(str::to_owned)
        .collect())
}

/// Writes a session log of `sessions` lines into `storage` (and `maildir/new`), in the shapes
/// of the replay at scale: the two campaigns' bots and variants, other senders and scanners,
/// from `clients` addresses over the hours from `start`; one session in `message_every` that
/// reached DATA has its message on disk. Deterministic.
pub fn synthetic_log(
    storage: &Path,
    sessions: u64,
    clients: u32,
    message_every: u64,
    start: std::time::SystemTime,
) -> anyhow::Result<()> {
    let new = storage.join("maildir/new");
    std::fs::create_dir_all(&new)?;
    let (bots, _) = replay();
    let mut out = std::io::BufWriter::new(std::fs::File::create(storage.join("sessions.jsonl"))?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..sessions {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bot = &bots[(x % bots.len() as u64) as usize];
        let client = Ipv4Addr::from(0xc612_0000 + (x >> 20) as u32 % clients);
        let at = start + Duration::from_millis(n * 37);
        let stamp = humantime::format_rfc3339_millis(at).to_string();
        let end = humantime::format_rfc3339_millis(at + Duration::from_millis(900)).to_string();
        let listed = !(x >> 8).is_multiple_of(3);
        let (signatures, pipelined, data): (Vec<&str>, bool, bool) = match bot.origin {
            Origin::Seed if listed => (
                vec![
                    "mail-from-eq-rcpt-to",
                    "no-rdns",
                    "pipelined-run-ahead",
                    "dnsbl-listed",
                ],
                true,
                false,
            ),
            Origin::Seed => (
                vec!["mail-from-eq-rcpt-to", "helo-ip-literal", "no-rdns"],
                true,
                true,
            ),
            Origin::Second if listed => (
                vec!["helo-bare-ip", "pregreet", "dnsbl-listed"],
                false,
                false,
            ),
            Origin::Second => (vec!["pregreet"], false, true),
            Origin::Other => (vec!["no-rdns"], false, bot.style == Style::Swaks),
        };
        let message = (data && n.is_multiple_of(message_every)).then(|| format!("{n}.M1P1.bench"));
        if let Some(name) = &message {
            std::fs::write(
                new.join(name),
                format!("Received: bench\r\n{}", bot.message),
            )?;
        }
        let transactions = if bot.mail_from.is_empty() {
            serde_json::json!([])
        } else {
            serde_json::json!([{
                "mail_from": bot.mail_from,
                "rcpts": [{"addr": bot.rcpt, "code": if listed { 550 } else { 250 }}],
                "data_code": data.then_some(250),
                "message": message,
                "size": bot.message.len(),
            }])
        };
        let line = serde_json::json!({
            "id": format!("b{n:012}"),
            "start": stamp,
            "end": end,
            "client_ip": client.to_string(),
            "client_port": 40000 + n % 20000,
            "rdns": null,
            "fcrdns": null,
            "helo": bot.helo,
            "tls": false,
            "pipelined": pipelined,
            "dnsbl": if listed { serde_json::json!([{"zone": "xbl.test", "codes": ["127.0.0.2"]}]) } else { serde_json::json!([]) },
            "score": u8::from(listed),
            "scored": true,
            "signatures": signatures,
            "verdict": if data { "accepted" } else { "rejected" },
            "transactions": transactions,
            "transcript": [
                [0, "s", "220-sinkhole.test ESMTP"],
                [300, "s", "220 sinkhole.test ESMTP"],
                [310, "c", format!("EHLO {}", bot.helo)],
                [311, "s", "250-sinkhole.test"],
                [320, "c", format!("MAIL FROM:<{}>", bot.mail_from)],
                [321, "s", "250 2.1.0 Ok"],
                [330, "c", format!("RCPT TO:<{}>", bot.rcpt)],
                [331, "s", if listed { "550 5.7.1 Client host blocked" } else { "250 2.1.5 Ok" }],
                [340, "c", "QUIT"],
                [341, "s", "221 2.0.0 Bye"],
            ],
            "transcript_dropped": 0,
            "transcript_bytes_dropped": 0,
            "transactions_dropped": 0,
            "rcpts_dropped": 0,
            "closed_by": null,
        });
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
