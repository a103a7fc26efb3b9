//! Hostile sessions against the real daemon over loopback: what one session keeps is bounded
//! whatever the client sends. A recipient flood leaves a session log line of at most the
//! record's bound (`smtp::MAX_RECORD_BYTES`) and a little, with the counts of what was cut; a
//! junk command flood gets 421 at `smtp.max_junk_commands`; fifty connections flooding
//! recipients keep the daemon's resident set small.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sinkhole::smtp::MAX_RECORD_BYTES;
use sinkhole_tests::daemon::{Daemon, SmtpClient};
use sinkhole_tests::{exclusive, rss_kib};

/// RCPTs per flooding session: past `max_recipients` (100) and past the 1,000 the record used
/// to keep.
const FLOOD_RCPTS: usize = 1_100;

/// What a session log line may hold besides the record: ids, times, addresses, verdict, the
/// cut marker and JSON's own punctuation.
const LINE_SLACK: usize = 4 * 1024;

/// EHLO, MAIL and [`FLOOD_RCPTS`] RCPTs of 2 KB addresses, pipelined in one write; returns once
/// every reply has arrived (the daemon has handled them all), with the connection open.
fn flood_recipients(addr: SocketAddr) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect to sinkhole");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let local = "a".repeat(2_000);
    let mut commands = b"EHLO flood.example\r\nMAIL FROM:<a@example.com>\r\n".to_vec();
    for i in 0..FLOOD_RCPTS {
        commands.extend_from_slice(format!("RCPT TO:<{local}{i}@example.org>\r\n").as_bytes());
    }
    // The replies (about 30 bytes each) fit the socket buffers: no need to read meanwhile.
    writer.write_all(&commands).unwrap();
    // One reply per command (the last line of each): banner, EHLO, MAIL, the RCPTs.
    let mut replies = 0;
    let mut line = String::new();
    while replies < 3 + FLOOD_RCPTS {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed early");
        if line.as_bytes().get(3) != Some(&b'-') {
            replies += 1;
        }
    }
    assert!(line.starts_with("452 "), "{line}");
    reader
}

fn quit(mut session: BufReader<TcpStream>) {
    session.get_mut().write_all(b"QUIT\r\n").unwrap();
    let mut line = String::new();
    session.read_line(&mut line).unwrap();
    assert!(line.starts_with("221 "), "{line}");
}

#[test]
fn a_recipient_flood_leaves_a_bounded_log_line_with_what_was_cut() {
    let mut daemon = Daemon::start("", "");
    for _ in 0..3 {
        quit(flood_recipients(daemon.addr));
    }
    daemon.stop();
    let log = std::fs::read_to_string(daemon.storage().join("sessions.jsonl")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3);
    let bound = MAX_RECORD_BYTES + LINE_SLACK;
    let lengths: Vec<usize> = lines.iter().map(|l| l.len()).collect();
    eprintln!(
        "session log lines of {lengths:?} bytes, {} in all",
        log.len()
    );
    for line in &lines {
        assert!(line.len() <= bound, "a line of {} bytes", line.len());
    }
    assert!(
        log.len() <= 3 * bound,
        "the log grew by {} bytes",
        log.len()
    );
    for session in daemon.sessions() {
        let rcpts = session["transactions"][0]["rcpts"].as_array().unwrap();
        // The first recipients are kept, the rest counted.
        assert!(!rcpts.is_empty());
        assert!(rcpts[0]["addr"].as_str().unwrap().starts_with("aaaa"));
        assert_eq!(
            rcpts.len() + session["rcpts_dropped"].as_u64().unwrap() as usize,
            FLOOD_RCPTS
        );
        assert!(session["transcript_dropped"].as_u64().unwrap() > 1_000);
        assert!(session["transcript_bytes_dropped"].as_u64().unwrap() > 1_000 * 512);
        // The beginning and the end of the transcript.
        let transcript = session["transcript"].as_array().unwrap();
        assert_eq!(transcript[1][2], "EHLO flood.example");
        assert_eq!(transcript[transcript.len() - 2][2], "QUIT");
        assert!(
            transcript
                .iter()
                .any(|l| l[2].as_str().unwrap().ends_with("more lines not kept]"))
        );
    }
}

#[test]
fn a_noop_flood_gets_421_at_the_junk_limit() {
    let mut daemon = Daemon::start("max_junk_commands = 5", "");
    let mut client = SmtpClient::connect(daemon.addr);
    client.reply();
    client.send(b"EHLO junk.example\r\n");
    client.reply();
    client.send(&b"NOOP\r\n".repeat(50));
    for _ in 0..5 {
        assert_eq!(client.reply(), ["250 2.0.0 Ok"]);
    }
    let closing = ["421 4.7.0 sinkhole.test Error: too many junk commands"];
    assert_eq!(client.reply(), closing);
    assert!(client.closed());
    daemon.stop();
    let sessions = daemon.sessions();
    assert_eq!(sessions[0]["closed_by"], "junk-commands");
    let transcript = sessions[0]["transcript"].as_array().unwrap();
    assert_eq!(transcript.last().unwrap()[2], closing[0]);
}

#[test]
fn fifty_recipient_floods_keep_the_resident_set_small() {
    // 50 sessions with records of today's bound, the accepted recipients of their open
    // transactions (100 of 2 KB each) and their buffers: about 15 MiB over the idle daemon.
    // Records of 1,000 lines and 1,000 recipients (1.1-2.6 MiB each) took over 100 MiB.
    const GROWTH_BOUND_KIB: u64 = 40 * 1024;
    let _machine = exclusive();
    let mut daemon = Daemon::start("", "");
    let idle = rss_kib(daemon.pid()).unwrap();
    let addr = daemon.addr;
    let sessions: Vec<_> = std::thread::scope(|scope| {
        let floods: Vec<_> = (0..50)
            .map(|_| scope.spawn(move || flood_recipients(addr)))
            .collect();
        floods.into_iter().map(|f| f.join().unwrap()).collect()
    });
    // Every session is open, its recipients handled and recorded.
    let flooded = rss_kib(daemon.pid()).unwrap();
    let growth = flooded.saturating_sub(idle);
    eprintln!("RSS idle {idle} KiB, with 50 flooded sessions {flooded} KiB (+{growth} KiB)");
    assert!(
        growth <= GROWTH_BOUND_KIB,
        "RSS grew by {growth} KiB (idle {idle} KiB)"
    );
    sessions.into_iter().for_each(quit);
    daemon.stop();
}
