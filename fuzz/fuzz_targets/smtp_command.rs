//! The command-line parser on any line: no panic, and what it returns borrows from the line in
//! the shape the session relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinkhole::smtp::fuzzing::{Command, parse, parse_mail_params};

fuzz_target!(|line: &[u8]| {
    let parsed = parse(line);
    let within = |part: &[u8]| {
        let outer = line.as_ptr_range();
        let inner = part.as_ptr_range();
        part.is_empty() || (outer.start <= inner.start && inner.end <= outer.end)
    };
    match parsed {
        Ok(Command::Helo(name) | Command::Ehlo(name)) => {
            assert!(within(name));
            assert!(!name.is_empty(), "empty HELO name accepted");
            assert_eq!(name, name.trim_ascii(), "HELO name keeps blanks");
        }
        Ok(Command::Mail { path, params } | Command::Rcpt { path, params }) => {
            assert!(within(path) && within(params));
            assert_eq!(params, params.trim_ascii(), "parameters keep blanks");
            let _ = parse_mail_params(params);
        }
        _ => {}
    }
    // The verb is case-insensitive: the same line with its verb in upper case parses the same.
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let mut upper = line.to_vec();
    upper[..verb_end].make_ascii_uppercase();
    assert_eq!(parse(&upper), parsed);
    let _ = parse_mail_params(line);
});
