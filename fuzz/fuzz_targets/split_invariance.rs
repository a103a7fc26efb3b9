//! The same client stream fed in one read and cut into many reads gives the same conversation:
//! the same replies, events, transcript and transactions (decisions are made the same way in
//! both). STARTTLS is not offered: accepting it discards the rest of its read (RFC 3207), which
//! depends on the cut by design. Cuts come from the schedule; without one, every line is a read.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sinkhole_fuzz::{Driver, Outcome, session_config, split_input};

fn run(stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut driver = Driver::new(session_config(false, 1000, 3), true);
    driver.greet();
    driver.settle();
    let mut from = 0;
    for &to in cuts.iter().chain([stream.len()].iter()) {
        let to = to.clamp(from, stream.len());
        driver.receive(&stream[from..to]);
        driver.settle();
        from = to;
    }
    Outcome::of(driver)
}

fuzz_target!(|data: &[u8]| {
    let (stream, schedule) = split_input(data);
    let mut cuts: Vec<usize> = if schedule.is_empty() {
        let lines = stream.iter().enumerate().filter(|&(_, &b)| b == b'\n');
        lines.map(|(i, _)| i + 1).collect()
    } else {
        let mut u = Unstructured::new(schedule);
        let cuts = Vec::<u16>::arbitrary(&mut u).unwrap_or_default();
        cuts.iter()
            .map(|&c| usize::from(c) % (stream.len() + 1))
            .collect()
    };
    cuts.sort_unstable();
    let whole = run(stream, &[]);
    let split = run(stream, &cuts);
    assert_eq!(whole, split, "cut at {cuts:?}");
});
