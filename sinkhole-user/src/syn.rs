//! A client's SYN fingerprint as the session log and the campaign report show it: what its TCP
//! stack put into the SYN that opened the connection (p0f's `ttl`, window, MSS, window scale and
//! option layout), recorded by the XDP program (`sinkhole_common::SynFingerprint`).

use serde::{Deserialize, Serialize};
use sinkhole_common::SynFingerprint;

/// The session log's `syn`: `{"ttl":64,"window":64240,"mss":1460,"wscale":7,
/// "options":"mss,sok,ts,nop,ws"}`; `mss` and `wscale` null when the SYN had none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Syn {
    /// The IP TTL (IPv6 hop limit) as it arrived.
    pub ttl: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    /// The option kinds in the order sent, by p0f's names (`eol`, `nop`, `mss`, `ws`, `sok`,
    /// `sack`, `ts`, else `?KIND`), comma-separated; `+` at the end when more followed than
    /// were kept, `!` when an option was malformed.
    pub options: String,
}

impl Syn {
    pub fn from_fingerprint(print: &SynFingerprint) -> Syn {
        let count = usize::from(print.option_count).min(print.options.len());
        let mut options: Vec<String> = print.options[..count]
            .iter()
            .map(|&kind| option_name(kind))
            .collect();
        if print.flags & SynFingerprint::MORE_OPTIONS != 0 {
            options.push("+".into());
        }
        if print.flags & SynFingerprint::BAD_OPTIONS != 0 {
            options.push("!".into());
        }
        Syn {
            ttl: print.ttl,
            window: print.window,
            mss: (print.flags & SynFingerprint::HAS_MSS != 0).then_some(print.mss),
            wscale: (print.flags & SynFingerprint::HAS_WSCALE != 0).then_some(print.wscale),
            options: options.join(","),
        }
    }

    /// The TTL the client's stack started with, as p0f guesses it: the next of 32, 64, 128
    /// and 255 at or above the one seen (routers on the way only lower it).
    pub fn initial_ttl(&self) -> u8 {
        match self.ttl {
            0..=32 => 32,
            33..=64 => 64,
            65..=128 => 128,
            _ => 255,
        }
    }

    /// What stays the same for every host running one TCP stack, wherever it sits: the
    /// initial TTL and the option layout (`ttl=64 options=mss,sok,ts,nop,ws`). The window,
    /// MSS and scale vary with the path and the host's memory.
    pub fn stack(&self) -> String {
        format!("ttl={} options={}", self.initial_ttl(), self.options)
    }

    /// The whole fingerprint on one line (`ttl=64 window=64240 mss=1460 wscale=7
    /// options=mss,sok,ts,nop,ws`), `-` for a missing option.
    pub fn line(&self) -> String {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "ttl={} window={} mss={} wscale={} options={}",
            self.ttl,
            self.window,
            or_dash(self.mss.map(|m| m.to_string())),
            or_dash(self.wscale.map(|w| w.to_string())),
            self.options
        )
    }
}

/// p0f's name for a TCP option kind.
fn option_name(kind: u8) -> String {
    match kind {
        0 => "eol".into(),
        1 => "nop".into(),
        2 => "mss".into(),
        3 => "ws".into(),
        4 => "sok".into(),
        5 => "sack".into(),
        8 => "ts".into(),
        other => format!("?{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linux_syn() {
        let mut print = SynFingerprint {
            window: 64240,
            mss: 1460,
            ttl: 61,
            wscale: 7,
            flags: SynFingerprint::HAS_MSS | SynFingerprint::HAS_WSCALE,
            option_count: 5,
            ..SynFingerprint::default()
        };
        print.options[..5].copy_from_slice(&[2, 4, 8, 1, 3]);
        let syn = Syn::from_fingerprint(&print);
        assert_eq!(syn.options, "mss,sok,ts,nop,ws");
        assert_eq!(syn.stack(), "ttl=64 options=mss,sok,ts,nop,ws");
        assert_eq!(
            syn.line(),
            "ttl=61 window=64240 mss=1460 wscale=7 options=mss,sok,ts,nop,ws"
        );
        assert_eq!(
            serde_json::to_value(&syn).unwrap(),
            serde_json::json!({"ttl": 61, "window": 64240, "mss": 1460, "wscale": 7,
                "options": "mss,sok,ts,nop,ws"})
        );
    }

    #[test]
    fn odd_syns() {
        let mut print = SynFingerprint {
            ttl: 200,
            flags: SynFingerprint::MORE_OPTIONS | SynFingerprint::BAD_OPTIONS,
            option_count: 200,
            ..SynFingerprint::default()
        };
        print.options[0] = 77;
        let syn = Syn::from_fingerprint(&print);
        assert_eq!(syn.initial_ttl(), 255);
        assert_eq!((syn.mss, syn.wscale), (None, None));
        assert!(syn.options.starts_with("?77,eol,"), "{}", syn.options);
        assert!(syn.options.ends_with(",+,!"), "{}", syn.options);
        assert_eq!(syn.line().split(' ').nth(2), Some("mss=-"));
    }
}
