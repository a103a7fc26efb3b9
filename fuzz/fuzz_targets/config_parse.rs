//! `Config::parse` on any text: no panic, and an error names a line of the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinkhole::config::{Config, ConfigError};

fuzz_target!(|text: &str| {
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            let ports = config.smtp_ports();
            assert!(ports.windows(2).all(|w| w[0] < w[1]));
        }
        Err(ConfigError::Invalid { line, key, .. }) => {
            assert!(!key.is_empty());
            assert!(
                (1..=text.lines().count() + 1).contains(&line),
                "error on line {line} of a {}-line text",
                text.lines().count()
            );
        }
        // Parsing text reads no file: neither the config's nor a per-address one.
        Err(e @ (ConfigError::Read { .. } | ConfigError::AddressFile(_))) => {
            panic!("parse reported a file error: {e}")
        }
    }
});
