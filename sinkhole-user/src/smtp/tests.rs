//! Session tests: scripted conversations (no sockets), and properties over any split of the
//! input into reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::signature::Signature::{self, *};

const IDLE: Duration = Duration::from_secs(300);
const ALMOST_IDLE: Step = Step::Wait(Duration::from_secs(299));

fn config(starttls: bool, max_message_bytes: u64, max_recipients: usize) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.example.test".into(),
        max_message_bytes,
        max_recipients,
        max_junk_commands: 100,
        idle_timeout: IDLE,
        greet_wait: Duration::ZERO,
        starttls,
        keep_bodies: true,
    })
}

fn default_config() -> Arc<SessionConfig> {
    config(false, 1000, 3)
}

const GREET_WAIT: Duration = Duration::from_secs(1);

/// The default config with a greet wait.
fn greeting_config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        greet_wait: GREET_WAIT,
        ..(*default_config()).clone()
    })
}

/// `config` with room for a flood of junk commands.
fn without_junk_limit(config: Arc<SessionConfig>) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        max_junk_commands: 100_000,
        ..(*config).clone()
    })
}

/// One thing the client (or the clock, or the daemon) does.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Bytes before the banner.
    Early(&'static [u8]),
    /// One write.
    Send(&'static [u8]),
    /// Time passes; the timer fires.
    Wait(Duration),
    Shutdown,
}
use Step::*;

/// (reply code, replies), ascending by code.
type ByCode = Vec<(u16, u32)>;

/// What a run produced.
#[derive(Debug)]
struct Run {
    output: Vec<u8>,
    events: Vec<String>,
    record: SessionRecord,
    finished: bool,
}

impl Run {
    /// The codes of the final line of each reply, space-separated.
    fn codes(&self) -> String {
        let text = String::from_utf8_lossy(&self.output);
        let codes: Vec<&str> = text
            .split("\r\n")
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        codes.join(" ")
    }

    /// Replies by code as the record counted them, and as they appear in the output.
    fn reply_counts(&self) -> (ByCode, ByCode) {
        let mut counted: ByCode = self.record.replies.iter().collect();
        counted.sort_unstable();
        let mut sent = ByCode::new();
        for code in self
            .codes()
            .split(' ')
            .filter_map(|c| c.parse::<u16>().ok())
        {
            match sent.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => sent.push((code, 1)),
            }
        }
        sent.sort_unstable();
        (counted, sent)
    }

    fn transcript(&self) -> Vec<String> {
        self.record
            .transcript
            .iter()
            .map(|l| l.line.clone())
            .collect()
    }
}

/// Drives a session like the server does; every decision is made the same way: HELO names,
/// senders and recipients starting with `bad` get 550, with `drop` 421 (the policy's
/// `disconnect`), recipients starting with `later` 451, others 250; messages containing `FAIL`
/// get 451; the connection is refused with [`Driver::refuse_connect`]'s reply, if set.
struct Driver {
    session: Session,
    now: Instant,
    output: Vec<u8>,
    events: Vec<String>,
    stored: usize,
    /// The body bytes handed out since the last message or discard.
    body: Vec<u8>,
    /// The reply to the connection, instead of accepting it.
    refuse_connect: Option<Reply>,
}

impl Driver {
    fn new(config: Arc<SessionConfig>) -> Driver {
        let now = Instant::now();
        Driver {
            session: Session::new(config, now),
            now,
            output: Vec::new(),
            events: Vec::new(),
            stored: 0,
            body: Vec::new(),
            refuse_connect: None,
        }
    }

    /// A driver that answers the connection with `code` instead of accepting it.
    fn refuse_connect(config: Arc<SessionConfig>, code: u16) -> Driver {
        let text = if code == 421 {
            "4.7.0 Closing connection"
        } else {
            "5.7.1 Access denied"
        };
        Driver {
            refuse_connect: Some(decided(code, text)),
            ..Driver::new(config)
        }
    }

    /// Writes out what the session has to say, takes its body bytes and makes its decisions,
    /// until it is quiet.
    fn settle(&mut self) {
        loop {
            let chunk = self.session.take_body();
            if !chunk.is_empty() {
                assert!(chunk.len() <= BODY_BUFFER);
                self.body.extend_from_slice(&chunk);
                self.session.body_taken(chunk);
                continue;
            }
            self.session.body_taken(chunk);
            let pending = self.session.output().to_vec();
            if !pending.is_empty() {
                self.output.extend_from_slice(&pending);
                self.session.consume_output(pending.len());
                continue;
            }
            let Some(event) = self.session.poll_event() else {
                break;
            };
            let body = match &event {
                Event::Message { .. } | Event::Discard => std::mem::take(&mut self.body),
                _ => Vec::new(),
            };
            match &event {
                Event::Message { size, .. } => {
                    assert_eq!(
                        body.len() as u64,
                        *size,
                        "the body handed out is not the message"
                    );
                    self.events.push(format!("{event:?} {body:?}"));
                }
                // The decisions at connect, HELO and MAIL show in the replies.
                Event::Connect | Event::Helo { .. } | Event::Mail { .. } => {}
                _ => self.events.push(format!("{event:?}")),
            }
            match event {
                Event::Connect => {
                    let reply = self.refuse_connect.clone();
                    let reply = reply.unwrap_or_else(|| decided(220, "2.0.0 Ok"));
                    self.session.resolve(reply, self.now);
                }
                Event::Helo { name } => {
                    let reply = by_name(&name, "5.7.1 Helo command rejected");
                    self.session.resolve(reply, self.now);
                }
                Event::Mail { mail_from } => {
                    let reply = by_name(&mail_from, "5.7.1 Sender address rejected");
                    self.session.resolve(reply, self.now);
                }
                Event::Recipient { rcpt, .. } => {
                    let reply = match rcpt {
                        r if r.starts_with("later") => decided(451, "4.3.0 Try again later"),
                        r => by_name(&r, "5.1.1 No such user"),
                    };
                    self.session.resolve(reply, self.now);
                }
                Event::Message { .. } if body.windows(4).any(|w| w == b"FAIL") => {
                    self.session.resolve_message(
                        Reply {
                            code: 451,
                            text: "4.3.0 Could not store".into(),
                        },
                        None,
                        self.now,
                    );
                }
                Event::Message { .. } => {
                    self.stored += 1;
                    let name = format!("msg{}", self.stored);
                    self.session.resolve_message(
                        Reply {
                            code: 250,
                            text: format!("2.0.0 Ok: queued as {name}"),
                        },
                        Some(name),
                        self.now,
                    );
                }
                Event::StartTls | Event::Discard => {}
            }
        }
    }

    fn greet_once(&mut self) {
        if self.output.is_empty() {
            self.session.greet(self.now);
            self.settle();
        }
    }

    /// One write, fed to the session in pieces cut at `cuts` (sorted offsets into `bytes`).
    fn send(&mut self, bytes: &[u8], cuts: &[usize]) {
        self.greet_once();
        let mut from = 0;
        for &to in cuts.iter().chain([bytes.len()].iter()) {
            let to = to.clamp(from, bytes.len());
            self.session.receive(&bytes[from..to], self.now);
            self.settle();
            from = to;
        }
    }

    fn run(mut self, script: &[Step]) -> Run {
        for step in script {
            match *step {
                Early(bytes) => self.session.receive_early(bytes, self.now),
                Send(bytes) => self.send(bytes, &[]),
                Wait(d) => {
                    self.greet_once();
                    self.now += d;
                    if self.now >= self.session.deadline() {
                        self.session.handle_timeout(self.now);
                    }
                    self.settle();
                }
                Shutdown => {
                    self.greet_once();
                    self.session.shutdown(self.now);
                    self.settle();
                }
            }
        }
        self.finish()
    }

    fn finish(mut self) -> Run {
        self.greet_once();
        let finished = self.session.is_finished();
        Run {
            output: self.output,
            events: self.events,
            record: self.session.into_record(),
            finished,
        }
    }
}

fn decided(code: u16, text: &str) -> Reply {
    Reply {
        code,
        text: text.into(),
    }
}

/// The driver's decision on a HELO name, sender or recipient: `bad...` refused with
/// `refusal`, `drop...` 421, others 250.
fn by_name(name: &str, refusal: &str) -> Reply {
    if name.starts_with("bad") {
        decided(550, refusal)
    } else if name.starts_with("drop") {
        decided(421, "4.7.0 Closing connection")
    } else {
        decided(250, "2.1.5 Ok")
    }
}

/// A session whose connection was accepted: its banner is out (not consumed).
fn greeted(config: Arc<SessionConfig>, now: Instant) -> Session {
    let mut session = Session::new(config, now);
    session.greet(now);
    assert!(matches!(session.poll_event(), Some(Event::Connect)));
    session.resolve(decided(220, "2.0.0 Ok"), now);
    session
}

/// Accepts the HELO and MAIL decisions the session asks for; the first other event.
fn next_event(session: &mut Session, now: Instant) -> Option<Event> {
    while let Some(event) = session.poll_event() {
        match event {
            Event::Helo { .. } | Event::Mail { .. } => {
                session.resolve(decided(250, "2.0.0 Ok"), now);
            }
            other => return Some(other),
        }
    }
    None
}

fn run(config: Arc<SessionConfig>, script: &[Step]) -> Run {
    Driver::new(config).run(script)
}

/// A conversation and what must come of it.
struct Case {
    name: &'static str,
    config: Arc<SessionConfig>,
    script: &'static [Step],
    replies: &'static str,
    signatures: &'static [Signature],
    pipelined: bool,
    finished: bool,
}

fn cases() -> Vec<Case> {
    let c = default_config;
    let case = |name, script, replies, signatures, pipelined, finished| Case {
        name,
        config: c(),
        script,
        replies,
        signatures,
        pipelined,
        finished,
    };
    vec![
        case(
            "one command per write",
            &[Send(b"EHLO client.example\r\n"), Send(b"MAIL FROM:<a@b.example>\r\n"), Send(b"RCPT TO:<t@example.org>\r\n"), Send(b"DATA\r\n"), Send(b"Subject: x\r\n\r\nhi\r\n.\r\n"), Send(b"QUIT\r\n")],
            "220 250 250 250 354 250 221",
            &[],
            false,
            true,
        ),
        case(
            "a whole transaction in one write",
            &[Send(b"EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=20 BODY=8BITMIME\r\nRCPT TO:<t@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")],
            "220 250 250 250 250 354 250 221",
            &[],
            true,
            true,
        ),
        case(
            "the logged session from host11.190-230-18.telecom.net.ar",
            &[Send(b"EHLO host11.190-230-18.telecom.net.ar\r\nMAIL From:<trap@example.org>\r\nRCPT To:<trap@example.org>\r\n")],
            "220 250 250 250",
            &[MailFromEqRcptTo],
            true,
            false,
        ),
        case(
            "HELO, NOOP, VRFY, HELP, RSET, QUIT",
            &[Send(b"HELO x\r\n"), Send(b"NOOP\r\n"), Send(b"VRFY root\r\n"), Send(b"HELP\r\n"), Send(b"RSET\r\n"), Send(b"quit\r\n")],
            "220 250 250 252 214 250 221",
            &[],
            false,
            true,
        ),
        case(
            "odd spacing and case in MAIL/RCPT",
            &[Send(b"ehlo x\r\n"), Send(b"mail from: <a@b>\r\n"), Send(b"Rcpt To : <c@d>\r\n"), Send(b"MAIL FROM:<a@b>\r\n")],
            "220 250 250 250 503",
            &[OutOfSequence],
            false,
            false,
        ),
        case(
            "the seed session: a refused MAIL with RCPT and DATA pipelined behind it",
            &[Send(b"EHLO host11.190-230-18.telecom.net.ar\r\nMAIL From:<bad@trap.example>\r\nRCPT To:<bad@trap.example>\r\nDATA\r\n")],
            "220 250 550 503 503",
            &[MailFromEqRcptTo, PipelinedRunAhead, OutOfSequence],
            true,
            false,
        ),
        case(
            "a refused MAIL, then RCPT waiting for the reply",
            &[Send(b"EHLO x\r\n"), Send(b"MAIL FROM:<bad@x>\r\n"), Send(b"RCPT TO:<c@d>\r\n"), Send(b"MAIL FROM:<a@x>\r\n"), Send(b"RCPT TO:<c@d>\r\n")],
            "220 250 550 503 250 250",
            &[OutOfSequence],
            false,
            false,
        ),
        case(
            "a refused HELO leaves the client ungreeted",
            &[Send(b"EHLO bad.example\r\n"), Send(b"MAIL FROM:<a@b>\r\n"), Send(b"HELO ok.example\r\n"), Send(b"MAIL FROM:<a@b>\r\n")],
            "220 550 503 250 250",
            &[OutOfSequence],
            false,
            false,
        ),
        case(
            "421 at MAIL closes the session",
            &[Send(b"EHLO x\r\nMAIL FROM:<drop@x>\r\nRCPT TO:<c@d>\r\n")],
            "220 250 421",
            &[],
            true,
            true,
        ),
        case(
            "421 at RCPT closes the session",
            &[Send(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<ok@d>\r\nRCPT TO:<drop@d>\r\nDATA\r\n")],
            "220 250 250 250 421",
            &[],
            true,
            true,
        ),
        case("421 at HELO closes the session", &[Send(b"HELO drop.example\r\nNOOP\r\n")], "220 421", &[], false, true),
        case("unknown command", &[Send(b"FOO bar\r\n")], "220 500", &[], false, false),
        case("EHLO without a name", &[Send(b"EHLO\r\n")], "220 501", &[], false, false),
        case("RCPT without an address", &[Send(b"EHLO x\r\n"), Send(b"MAIL FROM:<>\r\n"), Send(b"RCPT TO:<>\r\n")], "220 250 250 501", &[], false, false),
        case("STARTTLS not offered", &[Send(b"EHLO x\r\n"), Send(b"STARTTLS\r\n")], "220 250 502", &[], false, false),
        case("AUTH is not implemented", &[Send(b"EHLO x\r\n"), Send(b"AUTH LOGIN\r\n")], "220 250 502", &[], false, false),
        case("MAIL before EHLO", &[Send(b"MAIL FROM:<a@b>\r\n")], "220 503", &[OutOfSequence], false, false),
        case("RCPT before MAIL", &[Send(b"EHLO x\r\n"), Send(b"RCPT TO:<a@b>\r\n")], "220 250 503", &[OutOfSequence], false, false),
        case("DATA without RCPT", &[Send(b"EHLO x\r\n"), Send(b"MAIL FROM:<a@b>\r\n"), Send(b"DATA\r\n")], "220 250 250 503", &[OutOfSequence], false, false),
        case(
            "RCPT after a refused MAIL, in one write",
            &[Send(b"EHLO x\r\nMAIL FROM:<a@b> RET=HDRS\r\nRCPT TO:<c@d>\r\nDATA\r\n")],
            "220 250 555 503 503",
            &[PipelinedRunAhead, OutOfSequence],
            true,
            false,
        ),
        case(
            "RCPT after a refused MAIL, waiting for the reply",
            &[Send(b"EHLO x\r\n"), Send(b"MAIL FROM:<a@b> RET=HDRS\r\n"), Send(b"RCPT TO:<c@d>\r\n")],
            "220 250 555 503",
            &[OutOfSequence],
            false,
            false,
        ),
        case(
            "DATA after every RCPT was refused, with the body in the same write",
            &[Send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bad@d>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")],
            "220 250 250 550 554 500 500 500 500 221",
            &[PipelinedRunAhead],
            true,
            true,
        ),
        case(
            "DATA after every RCPT was refused, waiting for replies",
            &[Send(b"EHLO x\r\n"), Send(b"MAIL FROM:<a@b>\r\n"), Send(b"RCPT TO:<bad@d>\r\n"), Send(b"DATA\r\n")],
            "220 250 250 550 554",
            &[],
            false,
            false,
        ),
        case(
            "too many recipients",
            &[Send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<bad@d>\r\nRCPT TO:<3@d>\r\nRCPT TO:<4@d>\r\n")],
            "220 250 250 250 250 550 250 452",
            &[],
            true,
            false,
        ),
        case(
            "tempfail from the decisions",
            &[Send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<later@d>\r\nRCPT TO:<ok@d>\r\nDATA\r\nFAIL\r\n.\r\n")],
            "220 250 250 451 250 354 451",
            &[],
            true,
            false,
        ),
        case("SIZE over the limit", &[Send(b"EHLO x\r\n"), Send(b"MAIL FROM:<a@b> SIZE=1001\r\n")], "220 250 552", &[], false, false),
        case(
            "message over the limit, drained",
            &[Send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"), Send(&[b'x'; 1500]), Send(b"\r\n.\r\nRCPT TO:<c@d>\r\n")],
            "220 250 250 250 354 552 503",
            &[OutOfSequence],
            true,
            false,
        ),
        case(
            "BDAT chunks, then BDAT 0 LAST",
            &[Send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5\r\nhelloBDAT 3 LAST\r\nabc"), Send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 0 LAST\r\n")],
            "220 250 250 250 250 250 250 250 250",
            &[],
            true,
            false,
        ),
        case(
            "BDAT without a transaction is read and refused; DATA after BDAT too",
            &[Send(b"EHLO x\r\n"), Send(b"BDAT 4\r\nQUIT"), Send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nxDATA\r\n")],
            "220 250 503 250 250 250 503",
            &[OutOfSequence],
            true,
            false,
        ),
        case("BDAT over the limit", &[Send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1001\r\n"), Send(&[b'y'; 1001])], "220 250 250 250 552", &[], true, false),
        case("pregreet", &[Early(b"EHLO x\r\n"), Send(b"QUIT\r\n")], "220 250 221", &[Pregreet], false, true),
        case("idle timeout", &[Send(b"EHLO x\r\n"), ALMOST_IDLE, Send(b"NOOP\r\n"), Wait(IDLE)], "220 250 250 421", &[], false, true),
        case("shutdown", &[Send(b"EHLO x\r\n"), Shutdown], "220 250 421", &[], false, true),
        case(
            "a 2048-byte line is fine, a 2049-byte one is not",
            &[Send(LINE_2048), Send(LINE_2049), Send(b"NOOP\r\n")],
            "220 250 500 250",
            &[],
            false,
            false,
        ),
        case("a very long line gets one 500", &[Send(&[b'A'; 6000]), Send(b"\r\nNOOP\r\n")], "220 500 250", &[], false, false),
        case(
            "more than 10 bad commands",
            &[Send(b"A\r\nB\r\nC\r\nD\r\nE\r\nF\r\nG\r\nH\r\nI\r\nJ\r\nK\r\nNOOP\r\n")],
            "220 500 500 500 500 500 500 500 500 500 500 500 421",
            &[],
            true,
            true,
        ),
        case("bare LF line endings", &[Send(b"EHLO x\nMAIL FROM:<a@b>\n")], "220 250 250", &[], true, false),
        case("NUL and 8-bit bytes", &[Send(b"EH\0LO \xff\r\n\r\n\r\r\n")], "220 500 500 500", &[], true, false),
        case("HELO address literal", &[Send(b"EHLO [192.0.2.1]\r\n")], "220 250", &[HeloIpLiteral], false, false),
        case("HELO IPv6 literal", &[Send(b"HELO [IPv6:2001:db8::1]\r\n")], "220 250", &[HeloIpLiteral], false, false),
        case("HELO bare address", &[Send(b"EHLO 192.0.2.1\r\n")], "220 250", &[HeloBareIp], false, false),
        case("HELO not quite a literal", &[Send(b"EHLO [192.0.2]\r\n")], "220 250", &[], false, false),
        Case {
            name: "greet wait: a command before the banner's last line is pregreet, answered after it",
            config: greeting_config(),
            script: &[Send(b"EHLO x\r\n"), Wait(GREET_WAIT), Send(b"QUIT\r\n")],
            replies: "220 250 221",
            signatures: &[Pregreet],
            pipelined: false,
            finished: true,
        },
        Case {
            name: "greet wait: a client that waits for the last line is no pregreet",
            config: greeting_config(),
            script: &[Wait(GREET_WAIT), Send(b"EHLO x\r\n"), Send(b"QUIT\r\n")],
            replies: "220 250 221",
            signatures: &[],
            pipelined: false,
            finished: true,
        },
        Case {
            name: "greet wait: shutdown before the last line",
            config: greeting_config(),
            script: &[Send(b"EHLO x\r\n"), Shutdown],
            replies: "421",
            signatures: &[Pregreet],
            pipelined: false,
            finished: true,
        },
        Case {
            name: "STARTTLS: bytes after it are discarded, EHLO is needed again",
            config: config(true, 1000, 3),
            script: &[Send(b"EHLO x\r\n"), Send(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n"), Send(b"MAIL FROM:<a@b>\r\n"), Send(b"EHLO x\r\n"), Send(b"STARTTLS\r\n")],
            replies: "220 250 220 503 250 503",
            signatures: &[OutOfSequence],
            pipelined: false,
            finished: false,
        },
    ]
}

const LINE_2048: &[u8] = &{
    let mut line = [b'a'; 2050];
    let noop = b"NOOP ";
    let mut i = 0;
    while i < noop.len() {
        line[i] = noop[i];
        i += 1;
    }
    line[2048] = b'\r';
    line[2049] = b'\n';
    line
};

const LINE_2049: &[u8] = &{
    let mut line = [b'a'; 2051];
    line[2049] = b'\r';
    line[2050] = b'\n';
    line
};

#[test]
fn conversations() {
    for case in cases() {
        let run = run(case.config.clone(), case.script);
        assert_eq!(
            run.codes(),
            case.replies,
            "{}: replies\n{}",
            case.name,
            String::from_utf8_lossy(&run.output)
        );
        assert_eq!(
            run.record.signatures, case.signatures,
            "{}: signatures",
            case.name
        );
        assert_eq!(
            run.record.pipelined, case.pipelined,
            "{}: pipelined",
            case.name
        );
        assert_eq!(run.finished, case.finished, "{}: finished", case.name);
        let (counted, sent) = run.reply_counts();
        assert_eq!(counted, sent, "{}: replies counted by code", case.name);
    }
}

#[test]
fn a_refused_connection_serves_only_quit() {
    let run = Driver::refuse_connect(default_config(), 554).run(&[
        Early(b"EHLO early\r\n"),
        Send(b"NOOP\r\nMAIL FROM:<a@b>\r\n"),
        Send(b"QUIT\r\n"),
    ]);
    assert_eq!(run.codes(), "554 503 503 503 221");
    assert!(run.output.starts_with(b"554 5.7.1 Access denied\r\n"));
    assert!(run.finished);
    assert_eq!(run.record.connect_code, Some(554));
    assert_eq!(run.record.helo, None, "the EHLO was never served");
    assert_eq!(run.record.signatures, [Pregreet, OutOfSequence]);
    // Bad commands still count: a bot that goes on is closed.
    let run = Driver::refuse_connect(default_config(), 554).run(&[Send(&[b'X'; 0]), Send(
        b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n",
    )]);
    assert!(run.codes().ends_with("503 421"), "{}", run.codes());
    assert!(run.finished);
}

#[test]
fn a_421_at_connect_closes_before_the_banner() {
    let run = Driver::refuse_connect(default_config(), 421).run(&[Send(b"EHLO x\r\n")]);
    assert_eq!(run.codes(), "421");
    assert!(run.finished);
    assert_eq!(run.record.closed_by, Some(CloseReason::Policy));
    assert_eq!(run.record.connect_code, Some(421));
    assert!(run.record.transcript.iter().all(|l| l.line != "EHLO x"));
}

#[test]
fn refused_mail_is_recorded_with_its_code() {
    let run = run(
        default_config(),
        &[Send(
            b"EHLO x\r\nMAIL FROM:<bad@x.example>\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<c@d>\r\n",
        )],
    );
    let t = &run.record.transactions;
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[0].mail_from.as_str(), t[0].mail_code),
        ("bad@x.example", 550)
    );
    assert!(t[0].rcpts.is_empty());
    assert_eq!(
        (t[1].mail_from.as_str(), t[1].mail_code),
        ("a@x.example", 250)
    );
    assert_eq!(run.record.helo_code, Some(250));
    assert_eq!(run.record.connect_code, Some(220));
}

#[test]
fn every_reply_code_is_covered() {
    let seen: Vec<String> = cases()
        .iter()
        .map(|c| run(c.config.clone(), c.script).codes())
        .collect();
    let all = seen.join(" ");
    for code in [
        "220", "250", "221", "252", "214", "354", "421", "451", "452", "500", "501", "502", "503",
        "552", "554", "555",
    ] {
        assert!(all.split(' ').any(|c| c == code), "no case produces {code}");
    }
}

#[test]
fn banner_and_ehlo_text() {
    let run = run(config(true, 1000, 3), &[Send(b"EHLO x\r\n")]);
    assert_eq!(
        String::from_utf8_lossy(&run.output),
        "220 mx.example.test ESMTP\r\n250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
    );
    let without_tls = super::tests::run(default_config(), &[Send(b"EHLO x\r\n")]);
    assert!(!String::from_utf8_lossy(&without_tls.output).contains("STARTTLS"));
}

#[test]
fn every_reply_after_the_banner_has_an_enhanced_code() {
    for case in cases() {
        let run = run(case.config.clone(), case.script);
        let text = String::from_utf8_lossy(&run.output).into_owned();
        let mut in_ehlo = false;
        // The banner's lines (two with a greet wait) carry none either.
        let after_banner = text
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.ends_with("mx.example.test ESMTP"));
        for line in after_banner {
            // EHLO/HELO replies carry none (RFC 2034); they are the 250s naming us.
            if line.starts_with("250-mx.example.test") || line == "250 mx.example.test" {
                in_ehlo = line.starts_with("250-");
                continue;
            }
            if in_ehlo {
                in_ehlo = line.starts_with("250-");
                continue;
            }
            // RFC 3463 has classes 2, 4 and 5; the intermediate 354 uses 2.
            let class = if line.starts_with('3') {
                "2"
            } else {
                &line[..1]
            };
            assert!(
                line[4..].starts_with(&format!("{class}.")),
                "{}: {line}",
                case.name
            );
        }
    }
}

#[test]
fn message_bodies_are_unstuffed_and_kept_as_received() {
    let run = run(
        default_config(),
        &[Send(
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n..dot\r\nbare\nlf\r\n.\r\n",
        )],
    );
    let message = run
        .events
        .iter()
        .find(|e| e.starts_with("Message"))
        .expect("a message");
    assert!(
        message.contains(&format!("{:?}", b".dot\r\nbare\nlf\r\n".to_vec())),
        "{message}"
    );
}

/// A session after `354`, its output left unread.
fn session_in_data(now: Instant) -> Session {
    let mut session = greeted(config(false, 1 << 20, 3), now);
    session.receive(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", now);
    assert!(matches!(
        next_event(&mut session, now),
        Some(Event::Recipient { .. })
    ));
    session.resolve(
        Reply {
            code: 250,
            text: "2.1.5 Ok".into(),
        },
        now,
    );
    session.receive(b"DATA\r\n", now);
    session
}

#[test]
fn a_body_streams_through_a_bounded_buffer() {
    let now = Instant::now();
    let mut session = session_in_data(now);
    let body: Vec<u8> = (0..3 * MAX_RECEIVE)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    // One read of more than the buffer holds: the rest waits, and nothing more is read.
    session.receive(&body[..MAX_RECEIVE], now);
    let mut handed = Vec::new();
    let mut rest = &body[MAX_RECEIVE..];
    loop {
        let chunk = session.take_body();
        assert!(chunk.len() <= BODY_BUFFER);
        handed.extend_from_slice(&chunk);
        let empty = chunk.is_empty();
        session.body_taken(chunk);
        if !empty {
            continue;
        }
        if rest.is_empty() {
            break;
        }
        assert!(session.wants_read());
        let n = rest.len().min(MAX_RECEIVE);
        session.receive(&rest[..n], now);
        rest = &rest[n..];
    }
    session.receive(b"\r\n.\r\n", now);
    handed.extend_from_slice(&session.take_body());
    let mut whole = body.clone();
    whole.extend_from_slice(b"\r\n");
    assert_eq!(handed, whole);
    assert!(
        matches!(session.poll_event(), Some(Event::Message { size, .. }) if size == whole.len() as u64)
    );
}

#[test]
fn a_full_body_buffer_stops_reading() {
    let now = Instant::now();
    let mut session = session_in_data(now);
    session.receive(&vec![b'x'; MAX_RECEIVE], now);
    assert!(!session.wants_read(), "the buffer is full");
    let chunk = session.take_body();
    assert_eq!(chunk.len(), BODY_BUFFER - 1);
    session.body_taken(chunk);
    assert!(session.wants_read());
    assert_eq!(session.take_body().len(), 1, "the rest of the read");
}

#[test]
fn a_body_past_the_limit_is_discarded_then_refused() {
    let run = run(
        config(false, 10, 3),
        &[Send(
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n0123456789\r\nmore\r\n.\r\n",
        )],
    );
    assert_eq!(run.events.last().map(String::as_str), Some("Discard"));
    assert!(run.codes().ends_with("354 552"), "{}", run.codes());
}

#[test]
fn an_abandoned_bdat_transaction_is_discarded() {
    let run = run(
        default_config(),
        &[Send(
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3\r\nabcRSET\r\n",
        )],
    );
    assert_eq!(run.events.last().map(String::as_str), Some("Discard"));
}

#[test]
fn the_record_of_the_logged_session() {
    let run = run(default_config(), &[Send(b"EHLO host11.190-230-18.telecom.net.ar\r\nMAIL From:<trap@example.org>\r\nRCPT To:<trap@example.org>\r\n")]);
    assert_eq!(
        run.events,
        [r#"Recipient { mail_from: "trap@example.org", rcpt: "trap@example.org" }"#]
    );
    assert_eq!(
        run.record.helo.as_deref(),
        Some("host11.190-230-18.telecom.net.ar")
    );
    let transaction = &run.record.transactions[0];
    assert_eq!(transaction.mail_from, "trap@example.org");
    assert_eq!(
        (
            transaction.rcpts[0].addr.as_str(),
            transaction.rcpts[0].code
        ),
        ("trap@example.org", 250)
    );
    assert_eq!(transaction.data_code, None);
}

#[test]
fn transactions_are_recorded() {
    let run = run(default_config(), &[Send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@D>\r\nRCPT TO:<bad@d>\r\nDATA\r\n.x\r\n.\r\nMAIL FROM:<A@b>\r\nRSET\r\n")]);
    let t = &run.record.transactions;
    assert_eq!(t.len(), 2);
    assert_eq!(
        t[0].rcpts
            .iter()
            .map(|r| (r.addr.as_str(), r.code))
            .collect::<Vec<_>>(),
        [("c@D", 250), ("bad@d", 550)]
    );
    assert_eq!(
        (t[0].data_code, t[0].message.as_deref(), t[0].size),
        (Some(250), Some("msg1"), 3)
    );
    assert_eq!((t[1].mail_from.as_str(), t[1].data_code), ("A@b", None));
}

/// `commands` in one write, with a junk command limit of `max_junk_commands`.
fn run_junk(max_junk_commands: usize, commands: &[u8]) -> Run {
    let config = Arc::new(SessionConfig {
        max_junk_commands,
        ..(*default_config()).clone()
    });
    run_bytes_with(config, commands, &[])
}

#[test]
fn the_junk_command_past_the_limit_gets_421_and_ends_the_session() {
    let run = run_junk(100, &b"NOOP\r\n".repeat(101));
    let mut replies = vec!["220"];
    replies.extend(["250"; 100]);
    replies.push("421");
    assert_eq!(run.codes(), replies.join(" "));
    assert!(run.finished);
    assert_eq!(run.record.closed_by, Some(CloseReason::JunkCommands));
    let transcript = run.transcript();
    assert_eq!(
        transcript.last().map(String::as_str),
        Some("421 4.7.0 mx.example.test Error: too many junk commands")
    );
    // One under the limit: the session goes on.
    let run = run_junk(100, &b"NOOP\r\n".repeat(100));
    assert!(!run.finished && run.record.closed_by.is_none());
}

#[test]
fn rset_vrfy_and_help_are_junk_too() {
    let run = run_junk(3, b"RSET\r\nVRFY x\r\nHELP\r\nRSET\r\nNOOP\r\n");
    assert_eq!(run.codes(), "220 250 252 214 421");
    assert!(run.finished);
    // Other commands are not: EHLO, MAIL and RCPT in between do not count.
    let run = run_junk(
        2,
        b"NOOP\r\nEHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nNOOP\r\nQUIT\r\n",
    );
    assert_eq!(run.codes(), "220 250 250 250 250 250 221");
    assert!(run.record.closed_by.is_none());
}

#[test]
fn an_accepted_message_starts_the_junk_count_again() {
    // (message body, what follows, replies, closed by): a message refused (451) is no
    // delivery, and the count goes on.
    let cases = [
        (
            "hi",
            "NOOP\r\nNOOP\r\nQUIT\r\n",
            "220 250 250 250 250 250 354 250 250 250 221",
            None,
        ),
        (
            "FAIL",
            "NOOP\r\n",
            "220 250 250 250 250 250 354 451 421",
            Some(CloseReason::JunkCommands),
        ),
    ];
    for (body, after, replies, closed_by) in cases {
        let script = format!(
            "EHLO x\r\nNOOP\r\nNOOP\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n{body}\r\n.\r\n{after}"
        );
        let run = run_junk(2, script.as_bytes());
        assert_eq!(run.codes(), replies, "{body}");
        assert_eq!(run.record.closed_by, closed_by, "{body}");
    }
}

/// A client flooding the session: `rcpts` RCPTs of 2 KB addresses (pipelined, in writes of
/// about 64 KiB), then `junk` over-long junk lines, then QUIT.
fn flood(rcpts: usize, junk: usize) -> Run {
    let mut driver = Driver::new(without_junk_limit(config(false, 1000, 100)));
    let long = "a".repeat(2000);
    let mut commands = vec![b"EHLO flood.example\r\nMAIL FROM:<a@b>\r\n".to_vec()];
    commands
        .extend((0..rcpts).map(|i| format!("RCPT TO:<{long}{i}@example.org>\r\n").into_bytes()));
    commands.extend((0..junk).map(|i| format!("NOOP {long}{i}\r\n").into_bytes()));
    commands.push(b"QUIT\r\n".to_vec());
    let mut write = Vec::new();
    for command in commands {
        write.extend_from_slice(&command);
        if write.len() >= MAX_RECEIVE {
            driver.send(&std::mem::take(&mut write), &[]);
        }
    }
    driver.send(&write, &[]);
    driver.finish()
}

#[test]
fn a_flood_keeps_the_record_within_its_bytes() {
    let run = flood(10_000, 10_000);
    assert!(run.finished);
    let record = &run.record;
    let held = record.budget.bytes();
    assert!(held <= MAX_RECORD_BYTES, "{held} bytes held");
    let kept: usize = record
        .transcript
        .iter()
        .map(|l| l.line.len())
        .sum::<usize>()
        + record.transactions[0]
            .rcpts
            .iter()
            .map(|r| r.addr.len())
            .sum::<usize>();
    assert!(kept <= held, "{kept} bytes of text, {held} counted");
    // The beginning is kept: banner, EHLO, MAIL and the first recipients with their replies.
    let transcript = run.transcript();
    assert_eq!(transcript[0], "220 mx.example.test ESMTP");
    assert_eq!(transcript[1], "EHLO flood.example");
    assert_eq!(record.transactions.len(), 1);
    let kept = record.transactions[0].rcpts.len();
    assert!((10..100).contains(&kept), "{kept} recipients kept");
    assert!(record.transactions[0].rcpts[0].addr.starts_with("aaaa"));
    assert_eq!(record.rcpts_dropped, 10_000 - kept);
    // ... and the end: the last junk line, QUIT and its reply.
    let cut = record.transcript_cut.expect("the transcript was cut");
    assert!(cut > 20, "cut at {cut}");
    assert_eq!(
        transcript[transcript.len() - 2..],
        ["QUIT".to_owned(), "221 2.0.0 Bye".to_owned()]
    );
    assert!(transcript[transcript.len() - 4].starts_with("NOOP aaaa"));
    // Every line is counted, kept or not: the banner, EHLO and its 7 lines, then two lines
    // (command and reply) for MAIL, each RCPT and junk line, and QUIT.
    let lines = record.transcript.len() + record.transcript_dropped;
    assert_eq!(lines, 1 + 1 + 7 + 2 * (1 + 20_000 + 1));
    assert!(record.transcript_bytes_dropped > 20_000 * 512);
    // Each kept line stays within its own cap.
    assert!(
        transcript
            .iter()
            .all(|l| l.len() <= MAX_TRANSCRIPT_LINE_BYTES + 32)
    );
}

#[test]
fn transcript_lines() {
    let run = run(
        default_config(),
        &[Send(
            b"EHLO x\\y\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n0123456789\r\n.\r\n",
        )],
    );
    let lines = run.transcript();
    let expected = [
        "220 mx.example.test ESMTP",
        "EHLO x\\x5cy\\x0a",
        "250-mx.example.test",
        "250-PIPELINING",
        "250-SIZE 1000",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-SMTPUTF8",
        "250 CHUNKING",
        "MAIL FROM:<a@b>",
        "250 2.1.0 Ok",
        "RCPT TO:<c@d>",
        "250 2.1.5 Ok",
        "DATA",
        "354 2.0.0 End data with <CR><LF>.<CR><LF>",
        "<12 bytes>",
        ".",
        "250 2.0.0 Ok: queued as msg1",
    ];
    assert_eq!(lines, expected);
    let directions: String = run
        .record
        .transcript
        .iter()
        .map(|l| {
            if l.direction == Direction::Client {
                'c'
            } else {
                's'
            }
        })
        .collect();
    assert_eq!(directions, "scssssssscscscsccs");
}

#[test]
fn starttls_event_and_discarded_bytes() {
    let run = run(
        config(true, 1000, 3),
        &[
            Send(b"EHLO x\r\n"),
            Send(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n"),
        ],
    );
    assert_eq!(run.events, ["StartTls"]);
    assert!(
        run.transcript()
            .contains(&"<discarded after STARTTLS> MAIL FROM:<a@b>\\x0d\\x0a".to_owned()),
        "{:?}",
        run.transcript()
    );
}

#[test]
fn the_received_protocol_follows_the_greeting_and_tls() {
    let now = Instant::now();
    let mut session = greeted(config(true, 1000, 3), now);
    assert_eq!(session.protocol(), "SMTP");
    session.receive(b"HELO x\r\n", now);
    next_event(&mut session, now);
    assert_eq!(session.protocol(), "SMTP");
    session.receive(b"EHLO x\r\n", now);
    next_event(&mut session, now);
    assert_eq!(session.protocol(), "ESMTP");
    session.receive(b"HELO x\r\n", now);
    next_event(&mut session, now);
    assert_eq!(session.protocol(), "SMTP");
    session.receive(b"EHLO x\r\nSTARTTLS\r\n", now);
    next_event(&mut session, now);
    assert_eq!(session.protocol(), "ESMTPS");
}

#[test]
fn timestamps_are_ms_since_start() {
    let run = run(
        default_config(),
        &[Wait(Duration::from_millis(1500)), Send(b"NOOP\r\n")],
    );
    let noop = run
        .record
        .transcript
        .iter()
        .find(|l| l.line == "NOOP")
        .expect("logged");
    assert_eq!(noop.ms, 1500);
}

#[test]
fn a_client_that_never_reads_stops_being_read() {
    let now = Instant::now();
    let mut session = greeted(without_junk_limit(default_config()), now);
    session.consume_output(session.output().len());
    let noops = b"NOOP\r\n".repeat(16 * 1024);
    let mut chunks = noops.chunks(16 * 1024);
    let mut written = 0;
    let mut blocked = 0;
    loop {
        if session.wants_read() {
            match chunks.next() {
                Some(chunk) => session.receive(chunk, now),
                None => break,
            }
            continue;
        }
        // The client reads nothing until we stop reading it: output stays bounded.
        blocked += 1;
        assert!(session.output().len() <= OUTPUT_LIMIT + 64);
        let n = session.output().len();
        written += n;
        session.consume_output(n);
    }
    written += session.output().len();
    assert!(blocked > 0, "the output limit was reached");
    assert_eq!(
        written,
        16 * 1024 * b"250 2.0.0 Ok\r\n".len(),
        "every NOOP answered once"
    );
}

#[test]
fn input_waiting_for_a_decision_is_bounded() {
    let now = Instant::now();
    let mut session = greeted(default_config(), now);
    session.receive(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", now);
    assert!(matches!(
        next_event(&mut session, now),
        Some(Event::Recipient { .. })
    ));
    assert!(!session.wants_read());
    for _ in 0..10 {
        session.receive(&[b'N'; 64 * 1024], now);
    }
    assert!(
        session
            .record()
            .transcript
            .iter()
            .any(|l| l.line.contains("dropped"))
    );
    session.resolve(
        Reply {
            code: 250,
            text: "2.1.5 Ok".into(),
        },
        now,
    );
    assert!(
        session.is_finished(),
        "the buffered junk line is over-long and bad commands close it"
    );
}

#[test]
fn stray_resolves_are_ignored() {
    let now = Instant::now();
    let mut session = greeted(default_config(), now);
    session.resolve(
        Reply {
            code: 250,
            text: "2.1.5 Ok".into(),
        },
        now,
    );
    session.resolve_message(
        Reply {
            code: 250,
            text: "2.0.0 Ok".into(),
        },
        None,
        now,
    );
    assert_eq!(session.output(), b"220 mx.example.test ESMTP\r\n");
}

#[test]
fn shutdown_waits_for_the_pending_decision() {
    let now = Instant::now();
    let mut session = greeted(default_config(), now);
    session.receive(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n",
        now,
    );
    assert!(matches!(
        next_event(&mut session, now),
        Some(Event::Recipient { .. })
    ));
    session.shutdown(now);
    assert!(!session.is_finished());
    session.resolve(
        Reply {
            code: 250,
            text: "2.1.5 Ok".into(),
        },
        now,
    );
    assert!(session.is_finished());
    assert!(
        String::from_utf8_lossy(session.output())
            .ends_with("250 2.1.5 Ok\r\n421 4.3.2 mx.example.test Service shutting down\r\n")
    );
}

#[test]
fn no_timeout_while_a_decision_is_pending() {
    let now = Instant::now();
    let mut session = greeted(default_config(), now);
    session.receive(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", now);
    assert!(matches!(
        next_event(&mut session, now),
        Some(Event::Recipient { .. })
    ));
    let later = session.deadline() + Duration::from_secs(1);
    session.handle_timeout(later);
    assert!(!session.is_finished());
    assert!(session.deadline() > later);
}

// --- properties ---

/// Commands a well-behaved (or not) client sends; joined they make a script.
fn command_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"EHLO client.example\r\n".to_vec()),
        Just(b"HELO [192.0.2.1]\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.example>\r\n".to_vec()),
        Just(b"MAIL FROM:<> SIZE=10\r\n".to_vec()),
        Just(b"MAIL FROM:<x@y> FOO=1\r\n".to_vec()),
        Just(b"RCPT TO:<t@example.org>\r\n".to_vec()),
        Just(b"RCPT TO:<bad@example.org>\r\n".to_vec()),
        Just(b"RCPT TO:<later@example.org>\r\n".to_vec()),
        Just(b"DATA\r\nSubject: hi\r\n\r\n..dot\r\nFAIL\r\n.\r\n".to_vec()),
        Just(b"DATA\r\nbody\r\n.\r\n".to_vec()),
        Just(b"BDAT 6\r\nchunk!".to_vec()),
        Just(b"BDAT 3 LAST\r\nend".to_vec()),
        Just(b"BDAT 0 LAST\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b"NOOP\r\n".to_vec()),
        Just(b"VRFY x\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"QUIT\r\n".to_vec()),
        Just(b"garbage\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn script_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(command_strategy(), 0..25).prop_map(|commands| commands.concat())
}

/// Runs `bytes` as one write (cut at `cuts`). STARTTLS is not offered: accepting it discards the
/// rest of the read it came in, which depends on the split by design (RFC 3207).
fn run_bytes(bytes: &[u8], cuts: &[usize]) -> Run {
    run_bytes_with(config(false, 64, 3), bytes, cuts)
}

fn run_bytes_with(config: Arc<SessionConfig>, bytes: &[u8], cuts: &[usize]) -> Run {
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    let mut driver = Driver::new(config);
    driver.send(bytes, &cuts);
    driver.finish()
}

proptest! {
    #[test]
    fn any_split_gives_the_same_conversation(script in script_strategy(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(script.len() + 1)).collect();
        let whole = run_bytes(&script, &[]);
        let split = run_bytes(&script, &cuts);
        prop_assert_eq!(String::from_utf8_lossy(&whole.output), String::from_utf8_lossy(&split.output));
        prop_assert_eq!(whole.events, split.events);
        prop_assert_eq!(whole.finished, split.finished);
    }

    #[test]
    fn byte_by_byte_gives_the_same_conversation(script in script_strategy()) {
        let every: Vec<usize> = (1..script.len()).collect();
        let whole = run_bytes(&script, &[]);
        let split = run_bytes(&script, &every);
        prop_assert_eq!(whole.output, split.output);
        prop_assert_eq!(whole.events, split.events);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        let whole = run_bytes(&bytes, &[]);
        let split = run_bytes(&bytes, &cuts);
        prop_assert_eq!(&whole.output, &split.output);
        prop_assert_eq!(&whole.events, &split.events);
        let with_tls = run_bytes_with(config(true, 64, 3), &bytes, &cuts);
        for run in [&whole, &split, &with_tls] {
            prop_assert!(run.output.starts_with(b"220 "));
            // Every transcript line stays within its cap (escaping at most quadruples a byte).
            for line in &run.record.transcript {
                prop_assert!(line.line.len() <= 4 * MAX_TRANSCRIPT_LINE_BYTES + 64);
            }
            prop_assert!(run.record.signatures.windows(2).all(|w| w[0] < w[1]));
            let (counted, sent) = run.reply_counts();
            prop_assert_eq!(counted, sent);
        }
    }
}

#[test]
fn mail_is_refused_while_storage_is_short_and_what_depends_on_it_too() {
    let mut driver = Driver::new(default_config());
    driver.session.refuse_new_mail(true);
    // Pipelined: RCPT and DATA ran ahead of the refused MAIL; the body lines are read as
    // commands, as after any refused DATA.
    driver.send(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
        &[],
    );
    assert_eq!(driver.session.storage_refusals(), 1);
    // Refused only when it would have been accepted: a bad one is still a bad one.
    driver.send(
        b"MAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b> FOO=1\r\nQUIT\r\n",
        &[],
    );
    assert_eq!(driver.session.storage_refusals(), 1);
    let text = String::from_utf8_lossy(&driver.output).into_owned();
    assert!(
        text.contains("\r\n452 4.3.1 Insufficient system storage\r\n503 5.5.1 Out of sequence command\r\n503 5.5.1 Out of sequence command\r\n552 "),
        "{text}"
    );
    let run = driver.finish();
    assert_eq!(run.codes(), "220 250 452 503 503 552 555 221");
    assert!(run.record.transactions.is_empty());
    assert!(run.record.signatures.contains(&PipelinedRunAhead));
}

#[test]
fn mail_is_accepted_again_once_storage_is_back_and_a_transaction_under_way_goes_on() {
    let mut driver = Driver::new(default_config());
    driver.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", &[]);
    // Storage runs short in the middle of the transaction: it is finished.
    driver.session.refuse_new_mail(true);
    driver.send(b"DATA\r\nhi\r\n.\r\nMAIL FROM:<a@b>\r\n", &[]);
    driver.session.refuse_new_mail(false);
    driver.send(
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nagain\r\n.\r\n",
        &[],
    );
    assert_eq!(driver.session.storage_refusals(), 1);
    let run = driver.finish();
    assert_eq!(run.codes(), "220 250 250 250 354 250 452 250 250 354 250");
    assert_eq!(run.record.transactions.len(), 2);
}

#[test]
fn greet_wait_sends_the_banner_in_two_lines_and_waits_for_the_second() {
    let mut driver = Driver::new(greeting_config());
    driver.greet_once();
    assert_eq!(driver.output, b"220-mx.example.test ESMTP\r\n");
    // The idle timer does not run meanwhile: the greet wait is the deadline.
    assert_eq!(driver.session.deadline(), driver.now + GREET_WAIT);
    driver.send(b"EHLO early\r\n", &[]);
    assert_eq!(
        driver.output, b"220-mx.example.test ESMTP\r\n",
        "answered too early"
    );
    driver.now += GREET_WAIT - Duration::from_millis(1);
    driver.session.handle_timeout(driver.now);
    driver.settle();
    assert_eq!(
        driver.output, b"220-mx.example.test ESMTP\r\n",
        "last line too early"
    );
    let run = driver.run(&[Wait(Duration::from_millis(1))]);
    let text = String::from_utf8(run.output.clone()).unwrap();
    assert!(
        text.starts_with("220-mx.example.test ESMTP\r\n220 mx.example.test ESMTP\r\n250-"),
        "{text}"
    );
    assert_eq!(run.record.signatures, [Pregreet]);
    // Without a greet wait the banner is one line, as before.
    let plain = run_bytes(b"QUIT\r\n", &[]);
    assert!(
        plain
            .output
            .starts_with(b"220 mx.example.test ESMTP\r\n221")
    );
}
