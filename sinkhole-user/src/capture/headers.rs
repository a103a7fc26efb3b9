//! The trace header block prepended to every captured message, the dates it carries, the
//! client's own `X-Sinkhole-*` headers renamed ([`ClientHeaders`]) so that ours cannot be
//! forged, and the message's CRLF line endings written as LF ([`LfEndings`]), as Maildir
//! readers (mutt, Dovecot, Python's `mailbox`) expect.

use std::fmt::Write;
use std::io;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::score::DnsblListing;

/// What the trace headers say about a message's session.
#[derive(Clone, Debug)]
pub struct Trace {
    pub session_id: String,
    pub client: SocketAddr,
    pub rdns: Option<String>,
    pub helo: Option<String>,
    /// `SMTP`, `ESMTP` or `ESMTPS` ([`crate::smtp::Session::protocol`]).
    pub protocol: &'static str,
    pub dnsbl: Vec<DnsblListing>,
    pub mail_from: String,
    /// The accepted recipients (`X-Original-To`, a `Delivered-To` each, and the `Received:`
    /// line's `for` when there is one).
    pub rcpts: Vec<String>,
}

/// Longest value taken from client input into a header.
const MAX_VALUE: usize = 255;
/// Shown for a value the session does not have.
const NONE: &str = "(none)";

impl Trace {
    /// `Return-Path`, `X-Original-To`, `Delivered-To` (one per recipient), `Received` and the
    /// `X-Sinkhole-*` headers, as Postfix's local delivery writes the first three, LF-terminated,
    /// ready to be written in front of the body. `by` is our hostname (from the configuration).
    pub fn header_block(&self, by: &str, at: SystemTime) -> Vec<u8> {
        let helo = self.helo.as_deref().map(sanitize);
        let rdns = self.rdns.as_deref().map(sanitize);
        let ip = self.client.ip();
        let dnsbl = if self.dnsbl.is_empty() {
            NONE.to_string()
        } else {
            let listings: Vec<String> = self
                .dnsbl
                .iter()
                .map(|l| format!("{}={}", sanitize(&l.zone), sanitize(&l.codes.join(","))))
                .collect();
            listings.join("; ")
        };
        let rcpts: Vec<String> = self.rcpts.iter().map(|r| sanitize(r)).collect();
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "Return-Path: <{}>", sanitize(&self.mail_from));
        if !rcpts.is_empty() {
            let _ = writeln!(out, "X-Original-To: {}", rcpts.join(", "));
        }
        for rcpt in &rcpts {
            let _ = writeln!(out, "Delivered-To: {rcpt}");
        }
        // Postfix's `for <rcpt>; date` when there is one recipient.
        let for_rcpt = match rcpts.as_slice() {
            [one] => format!("\n\tfor <{one}>; "),
            _ => ";\n\t".to_owned(),
        };
        let _ = write!(
            out,
            "Received: from {helo} ({rdns} [{ip}])\n\tby {by} (sinkhole) with {protocol} id {id}{for_rcpt}{date}\n\
             X-Sinkhole-Session: {id}\n\
             X-Sinkhole-Client: {client}\n\
             X-Sinkhole-Rdns: {rdns_value}\n\
             X-Sinkhole-Helo: {helo_value}\n\
             X-Sinkhole-Dnsbl: {dnsbl}\n",
            helo = helo.as_deref().unwrap_or("unknown"),
            rdns = rdns.as_deref().unwrap_or("unknown"),
            protocol = self.protocol,
            id = self.session_id,
            date = rfc5322_date(at),
            client = self.client,
            rdns_value = rdns.as_deref().unwrap_or(NONE),
            helo_value = helo.as_deref().unwrap_or(NONE),
        );
        out.into_bytes()
    }
}

/// The header-name prefix of our trace headers, lower-case: the client's own headers that start
/// with it (in any case) are renamed to start with [`CLIENT_SUPPLIED`].
const OURS: &[u8] = b"x-sinkhole-";
/// What a client's `X-Sinkhole-NAME` header is renamed to: `X-Sinkhole-Client-Supplied-NAME`.
const CLIENT_SUPPLIED: &[u8] = b"X-Sinkhole-Client-Supplied-";

/// Copies a message, streamed in chunks cut anywhere, renaming the client's headers that start
/// with `X-Sinkhole-` (in any case) to `X-Sinkhole-Client-Supplied-...`; every other byte is
/// copied as it is. Only the header section is looked at: it ends at the first empty line.
/// Continuation lines (starting with a space or tab) stay with their header, whatever it is.
///
/// [`ClientHeaders::write`] each chunk in order, then [`ClientHeaders::finish`]. A chunk is
/// written on in runs, not copied; only the start of a possible `X-Sinkhole-` that a chunk
/// ends in is held back (at most 10 bytes) until the next chunk decides it.
#[derive(Debug, Default)]
pub struct ClientHeaders {
    state: State,
    /// The bytes of a possible `X-Sinkhole-` that earlier chunks ended in, as the client wrote
    /// them (`held[..held_len]`).
    held: [u8; OURS.len()],
    held_len: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// At the start of a line in the header section.
    #[default]
    LineStart,
    /// The first N bytes of this header line match `x-sinkhole-`.
    Ours(usize),
    /// Within a header line whose name is decided.
    Line,
    /// Past the header section: the rest is copied.
    Body,
}

impl ClientHeaders {
    /// Writes `chunk`, the next part of the message, on `out`.
    pub fn write(&mut self, chunk: &[u8], out: &mut impl io::Write) -> io::Result<()> {
        // chunk[run..i] is decided and not written yet.
        let (mut run, mut i) = (0, 0);
        while i < chunk.len() {
            match self.state {
                State::Body => break,
                State::Line => match chunk[i..].iter().position(|&b| b == b'\n') {
                    Some(n) => {
                        i += n + 1;
                        self.state = State::LineStart;
                    }
                    None => i = chunk.len(),
                },
                State::LineStart => match chunk[i] {
                    b'\r' | b'\n' => self.state = State::Body,
                    b' ' | b'\t' => self.state = State::Line,
                    _ => {
                        out.write_all(&chunk[run..i])?;
                        run = i;
                        self.state = State::Ours(0);
                    }
                },
                State::Ours(matched) if chunk[i].to_ascii_lowercase() == OURS[matched] => {
                    i += 1;
                    if matched + 1 < OURS.len() {
                        self.state = State::Ours(matched + 1);
                    } else {
                        // The client's `X-Sinkhole-`, held and in chunk[run..i], is replaced.
                        out.write_all(CLIENT_SUPPLIED)?;
                        self.held_len = 0;
                        run = i;
                        self.state = State::Line;
                    }
                }
                State::Ours(_) => {
                    // Not ours: what was held goes out first, chunk[run..i] follows in the run.
                    out.write_all(&self.held[..self.held_len])?;
                    self.held_len = 0;
                    self.state = State::Line;
                }
            }
        }
        if let State::Ours(_) = self.state {
            // chunk[run..] is the start of a possible `X-Sinkhole-`: held until it is decided.
            let part = &chunk[run..];
            self.held[self.held_len..self.held_len + part.len()].copy_from_slice(part);
            self.held_len += part.len();
            return Ok(());
        }
        out.write_all(&chunk[run..])
    }

    /// Ends the message: writes what is still held (a message that ends inside `X-Sinkhole-`).
    pub fn finish(self, out: &mut impl io::Write) -> io::Result<()> {
        out.write_all(&self.held[..self.held_len])
    }
}

/// Writes a message streamed in chunks cut anywhere with each CRLF turned into LF; every other
/// byte (a lone CR too) is written as it is. A CR that ends a chunk is held until the next
/// chunk says whether an LF follows.
#[derive(Debug, Default)]
pub struct LfEndings {
    /// The last chunk ended in a CR, not written yet.
    cr: bool,
}

impl LfEndings {
    /// Appends `chunk`, the next part of the message, to `out`.
    pub fn write(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        if rest.is_empty() {
            return;
        }
        if std::mem::take(&mut self.cr) && rest.first() != Some(&b'\n') {
            out.push(b'\r');
        }
        while let Some(at) = memchr::memmem::find(rest, b"\r\n") {
            out.extend_from_slice(&rest[..at]);
            rest = &rest[at + 1..];
        }
        match rest.strip_suffix(b"\r") {
            Some(before) => {
                out.extend_from_slice(before);
                self.cr = true;
            }
            None => out.extend_from_slice(rest),
        }
    }

    /// Ends the message: a CR held at its very end is written.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.cr {
            out.push(b'\r');
        }
    }
}

/// Client input made safe for a header value: printable ASCII only (anything else, CR and LF
/// first of all, becomes `?`), at most [`MAX_VALUE`] characters.
pub fn sanitize(value: &str) -> String {
    value
        .chars()
        .take(MAX_VALUE)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// `Thu, 26 Nov 2026 20:45:51 +0000` (RFC 5322 section 3.3, in UTC).
pub fn rfc5322_date(at: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    let rest = secs % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Forged trace headers in several spellings, one folded, and look-alikes that stay.
    const SAMPLE: &[u8] = b"Received: from mx.example\r\n\
        X-Sinkhole-Client: 6.6.6.6\r\n\
        x-sinkhole-session: forged\r\n\
        X-SINKHOLE-Dnsbl: folded\r\n\
        \tX-Sinkhole-Helo: a continuation line stays\r\n\
        X-Sinkhole: no dash\r\n\
        X-Sinkholes: n\r\n\
        Subject: X-Sinkhole-Client in a value\r\n\
        X-Sinkhole-\r\n\
        \r\n\
        X-Sinkhole-Client: in the body\r\n\
        \x1b\x00\xff\r\n";

    const RENAMED: &[u8] = b"Received: from mx.example\r\n\
        X-Sinkhole-Client-Supplied-Client: 6.6.6.6\r\n\
        X-Sinkhole-Client-Supplied-session: forged\r\n\
        X-Sinkhole-Client-Supplied-Dnsbl: folded\r\n\
        \tX-Sinkhole-Helo: a continuation line stays\r\n\
        X-Sinkhole: no dash\r\n\
        X-Sinkholes: n\r\n\
        Subject: X-Sinkhole-Client in a value\r\n\
        X-Sinkhole-Client-Supplied-\r\n\
        \r\n\
        X-Sinkhole-Client: in the body\r\n\
        \x1b\x00\xff\r\n";

    /// `message` through [`ClientHeaders`] in the chunks `cuts` (ascending offsets) make.
    fn renamed(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut client = ClientHeaders::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([&message.len()]) {
            client.write(&message[from..cut], &mut out).unwrap();
            from = cut;
        }
        client.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn the_clients_trace_headers_are_renamed_at_every_split() {
        assert_eq!(
            String::from_utf8_lossy(&renamed(SAMPLE, &[])),
            String::from_utf8_lossy(RENAMED)
        );
        // Every pair of cuts: three chunks, `X-Sinkhole-` cut anywhere, even twice.
        for first in 0..=SAMPLE.len() {
            for second in first..=SAMPLE.len() {
                assert_eq!(
                    renamed(SAMPLE, &[first, second]),
                    RENAMED,
                    "cut at {first} and {second}"
                );
            }
        }
    }

    #[test]
    fn what_is_held_at_the_end_is_written() {
        assert_eq!(renamed(b"X-Sinkh", &[3]), b"X-Sinkh");
        assert_eq!(renamed(b"X-Sinkhole-", &[5]), CLIENT_SUPPLIED);
        assert_eq!(renamed(b"", &[]), b"");
        assert_eq!(
            renamed(b"\r\nX-Sinkhole-A: b", &[4]),
            b"\r\nX-Sinkhole-A: b"
        );
    }

    /// The rule stated on a whole message, line by line: the model [`ClientHeaders`] must match.
    fn model(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut in_header = true;
        for line in message.split_inclusive(|&b| b == b'\n') {
            in_header &= !matches!(line.first(), Some(b'\r' | b'\n'));
            match line.get(..OURS.len()) {
                Some(name) if in_header && name.eq_ignore_ascii_case(OURS) => {
                    out.extend_from_slice(CLIENT_SUPPLIED);
                    out.extend_from_slice(&line[OURS.len()..]);
                }
                _ => out.extend_from_slice(line),
            }
        }
        out
    }

    /// Messages made of header-ish lines, with our prefix often, and a body.
    fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            Just(b"X-Sinkhole-".to_vec()),
            Just(b"x-SINKHOLE-".to_vec()),
            Just(b"X-Sinkhol".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\t".to_vec()),
            Just(b" ".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(line, 0..30).prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn any_chunking_renames_as_the_model_does(
            message in message_strategy(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(message.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(renamed(&message, &cuts), model(&message));
        }
    }

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let at = UNIX_EPOCH + Duration::from_secs(1_709_208_000); // 2024-02-29 12:00:00
        assert_eq!(rfc5322_date(at), "Thu, 29 Feb 2024 12:00:00 +0000");
        let at = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31 23:59:59
        assert_eq!(rfc5322_date(at), "Thu, 31 Dec 2026 23:59:59 +0000");
    }

    #[test]
    fn client_input_cannot_inject_headers() {
        let trace = Trace {
            session_id: "abc".into(),
            client: "[2001:db8::7]:4000".parse().unwrap(),
            rdns: None,
            helo: Some("evil\r\nX-Injected: yes\u{7f}é".into()),
            protocol: "ESMTPS",
            dnsbl: vec![DnsblListing {
                zone: "zen.example".into(),
                codes: vec!["127.0.0.2".into(), "127.0.0.4".into()],
            }],
            mail_from: "a@b\nc".into(),
            rcpts: vec![
                "t1@example.org".into(),
                "t2\r\nX-Evil: 1@example.org".into(),
            ],
        };
        let block = String::from_utf8(trace.header_block("mx.example", UNIX_EPOCH)).unwrap();
        assert!(!block.contains("\nX-Injected") && !block.contains("\nX-Evil"));
        assert!(block.contains("X-Sinkhole-Helo: evil??X-Injected: yes??\n"));
        assert!(block.starts_with(
            "Return-Path: <a@b?c>\nX-Original-To: t1@example.org, t2??X-Evil: 1@example.org\n\
             Delivered-To: t1@example.org\nDelivered-To: t2??X-Evil: 1@example.org\nReceived: "
        ));
        // Two recipients: the Received line names none.
        assert!(block.contains("\tby mx.example (sinkhole) with ESMTPS id abc;\n"));
        assert!(block.contains("X-Sinkhole-Client: [2001:db8::7]:4000\n"));
        assert!(block.contains("X-Sinkhole-Rdns: (none)\n"));
        assert!(block.contains("X-Sinkhole-Dnsbl: zen.example=127.0.0.2,127.0.0.4\n"));
        // Every line ends in LF; continuation lines start with a tab.
        for line in block.split_terminator('\n') {
            assert!(!line.contains('\r'));
            assert!(line.starts_with('\t') || line.contains(": "), "{line:?}");
        }
        assert!(sanitize(&"x".repeat(1000)).len() == MAX_VALUE);
    }

    #[test]
    fn one_recipient_is_named_in_the_received_line() {
        let trace = Trace {
            session_id: "abc".into(),
            client: "192.0.2.7:4000".parse().unwrap(),
            rdns: Some("mx.example.net".into()),
            helo: Some("mx.example.net".into()),
            protocol: "ESMTP",
            dnsbl: Vec::new(),
            mail_from: String::new(),
            rcpts: vec!["trap@example.org".into()],
        };
        let block = String::from_utf8(trace.header_block("mx.example", UNIX_EPOCH)).unwrap();
        assert_eq!(
            block.lines().take(6).collect::<Vec<_>>(),
            [
                "Return-Path: <>",
                "X-Original-To: trap@example.org",
                "Delivered-To: trap@example.org",
                "Received: from mx.example.net (mx.example.net [192.0.2.7])",
                "\tby mx.example (sinkhole) with ESMTP id abc",
                "\tfor <trap@example.org>; Thu, 01 Jan 1970 00:00:00 +0000",
            ]
        );
    }

    /// `message` through [`LfEndings`] in the chunks `cuts` make.
    fn lf(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lf = LfEndings::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([&message.len()]) {
            lf.write(&message[from..cut], &mut out);
            from = cut;
        }
        lf.finish(&mut out);
        out
    }

    #[test]
    fn crlf_becomes_lf_at_every_split_and_nothing_else_changes() {
        let message = b"a\r\nb\rc\n\r\r\nd\r\n\r\n\x00\xff\r";
        let expected = b"a\nb\rc\n\r\nd\n\n\x00\xff\r";
        for first in 0..=message.len() {
            for second in first..=message.len() {
                assert_eq!(lf(message, &[first, second]), expected, "{first} {second}");
            }
        }
        assert_eq!(lf(b"", &[]), b"");
    }
}
