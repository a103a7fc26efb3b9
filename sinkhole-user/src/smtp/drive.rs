//! The one way to drive a [`Session`], built only on its public interface (in the spirit of
//! rustls' `complete_io`): the server loop and the fuzz harness both go through it, so the call
//! order lives here rather than in two copies.
//!
//! - At accept, [`accept`]: the bytes already waiting, then the banner; then [`settle`].
//! - Each read from the client, made while [`Session::wants_read`]: [`receive`].
//! - After every other call into the session ([`Session::consume_output`],
//!   [`Session::resolve`], [`Session::resolve_message`],
//!   [`Session::handle_timeout`], [`Session::shutdown`]): [`settle`]. Writing resumes input held
//!   back by backpressure and a decision resumes buffered pipelined input, so any of them can
//!   produce replies and events.

use std::time::Instant;

use super::{Event, MAX_RECEIVE, Session};

/// The caller's side of a session: it keeps the session, answers its events and writes its
/// output. The session is reached through [`Host::session`] rather than lent alongside, so that
/// answering an event may use the rest of the host (a server reaches its session by slot).
pub trait Host {
    fn session(&mut self) -> &mut Session;

    /// Body bytes of the message being received (dot-unstuffed, at most [`super::BODY_BUFFER`]
    /// at a time), in order, before the [`Event::Message`] or [`Event::Discard`] that ends them.
    /// Keep them (or not) now: the session reuses the buffer.
    fn body(&mut self, chunk: &[u8]);

    /// An event the session raised. Answer it now (`resolve_*` on [`Host::session`]), or keep
    /// it and answer later, then [`settle`]; the session reads nothing more meanwhile.
    fn event(&mut self, event: Event);

    /// Writes as much of [`Session::output`] as the connection takes now (maybe nothing) and
    /// [`Session::consume_output`]s it. Called once the events are answered, so all replies to
    /// one read go out together. [`Event::StartTls`]: the `220` goes out in plaintext, and the
    /// handshake starts only once it is out.
    fn flush(&mut self);
}

/// A new session's first call: `early` is what the client sent before the banner (it marks the
/// session `pregreet`); then the session asks for the decision on the connection
/// ([`super::Event::Connect`]), whose answer sends the banner and works through any commands in
/// `early`. [`settle`] next.
pub fn accept(session: &mut Session, early: &[u8], now: Instant) {
    session.receive_early(early, now);
    session.greet(now);
}

/// One read from the client, fed in pieces of at most [`MAX_RECEIVE`], each followed by
/// [`settle`] (so a decision answered at once lets the next piece be worked through instead of
/// held). Read only while [`Session::wants_read`]; bytes fed while the session waits are kept up
/// to [`super::INPUT_CAP`], then dropped. After [`Event::StartTls`], feed decrypted bytes only.
pub fn receive(host: &mut impl Host, read: &[u8], now: Instant) {
    for piece in read.chunks(MAX_RECEIVE) {
        host.session().receive(piece, now);
        settle(host);
    }
}

/// Hands the body bytes waiting to [`Host::body`] and every event to [`Host::event`] (body bytes
/// first: they come before the events that follow them), then lets [`Host::flush`] write; again
/// while writing raised more. Once the session [`Session::is_finished`] and its output is written, the host
/// closes the connection (a client that does not read the last reply is the host's to time
/// out: the session has nothing more to say).
pub fn settle(host: &mut impl Host) {
    loop {
        loop {
            hand_body(host);
            match host.session().poll_event() {
                Some(event) => host.event(event),
                None => break,
            }
        }
        host.flush();
        // Writing lets held-back input through, which may make body bytes, events and replies.
        let handed = hand_body(host);
        match host.session().poll_event() {
            Some(event) => host.event(event),
            None if handed => {}
            None => return,
        }
    }
}

/// Hands the body bytes waiting to [`Host::body`] until none are left (taking them lets held-back
/// input through, which may make more); whether there were any.
fn hand_body(host: &mut impl Host) -> bool {
    let mut any = false;
    loop {
        let chunk = host.session().take_body();
        if chunk.is_empty() {
            host.session().body_taken(chunk);
            return any;
        }
        any = true;
        host.body(&chunk);
        host.session().body_taken(chunk);
    }
}
