//! The whole `Session` under a script of what the client, the clock and the server do: bytes
//! before the banner, reads cut anywhere, time passing, output written in any amounts,
//! decisions with any code and text, shutdown. The driver checks after every call that the
//! session never panics, keeps its output and record bounded, writes only whole reply lines,
//! asks one decision at a time, and says nothing once finished; at the end the session must
//! idle out.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sinkhole_fuzz::{Code, Driver, session_config, split_input};

#[derive(Arbitrary, Debug)]
enum Op {
    /// The next `n` stream bytes arrive before the banner (ignored once greeted).
    Early(u16),
    /// The next `n` stream bytes arrive as one read.
    Receive(u16),
    /// Milliseconds pass, then the timer fires.
    Wait(u32),
    /// `n` output bytes are written.
    Consume(u16),
    ConsumeAll,
    /// The connection, a HELO, MAIL or RCPT.
    Resolve(Code, Option<String>),
    ResolveMessage(Code, bool),
    Shutdown,
}

const MAX_OPS: usize = 4096;

/// The next `n` bytes of the stream (fewer at its end).
fn take<'a>(rest: &mut &'a [u8], n: u16) -> &'a [u8] {
    let (now, later) = rest.split_at(usize::from(n).min(rest.len()));
    *rest = later;
    now
}

fuzz_target!(|data: &[u8]| {
    let (stream, schedule) = split_input(data);
    let mut u = Unstructured::new(schedule);
    let starttls = bool::arbitrary(&mut u).unwrap_or(true);
    let max_message_bytes = u64::from(u16::arbitrary(&mut u).unwrap_or(1000)) + 1;
    let max_recipients = usize::from(u8::arbitrary(&mut u).unwrap_or(2) % 8) + 1;
    let mut driver = Driver::new(
        session_config(starttls, max_message_bytes, max_recipients),
        false,
    );
    let mut rest = stream;
    for op in u.arbitrary_iter::<Op>().into_iter().flatten().take(MAX_OPS) {
        let Ok(op) = op else { break };
        match op {
            Op::Early(n) => {
                let bytes = take(&mut rest, n);
                driver.early(bytes);
            }
            Op::Receive(n) => {
                let bytes = take(&mut rest, n);
                driver.receive(bytes);
            }
            Op::Wait(ms) => driver.wait(u64::from(ms % 400_000)),
            Op::Consume(n) => driver.consume(usize::from(n)),
            Op::ConsumeAll => driver.consume_all(),
            Op::Resolve(code, text) => {
                driver.resolve_command(code.reply(text.as_deref()));
            }
            Op::ResolveMessage(code, stored) => {
                let name = stored.then(|| "msg".to_owned());
                driver.resolve_message(code.reply(None), name);
            }
            Op::Shutdown => driver.shutdown(),
        }
    }
    driver.finish(rest);
});
