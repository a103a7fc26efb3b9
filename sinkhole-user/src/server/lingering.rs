//! Sessions whose connection closed while the resolver still owed them an answer (the score,
//! or the check of the HELO name): their signatures and escalation must not depend on how fast
//! the client quit, so they are logged once the last answer is in.
//!
//! Bounded without a limit of its own: an entry needs a request the resolver took, the
//! resolver takes at most its outstanding requests (`score::Limits::outstanding`, beyond them
//! it is busy), and it answers every one within `dnsbl.timeout`. At shutdown what is left is
//! drained and logged with what it has.

use std::collections::HashMap;
use std::collections::hash_map::IntoValues;
use std::time::Instant;

use super::ended::EndedSession;
use crate::score::Answer;

/// Ended sessions awaiting the resolver, by the resolver token of their connection.
#[derive(Debug, Default)]
pub struct Lingering {
    sessions: HashMap<u64, EndedSession>,
}

impl Lingering {
    /// Keeps `session` (which [awaits answers](EndedSession::awaits_answers)) until they come.
    pub fn insert(&mut self, token: u64, session: EndedSession) {
        self.sessions.insert(token, session);
    }

    /// Gives `answer` to the session lingering under `token`, if there is one; hands the
    /// session back once the resolver owes it nothing more.
    pub fn answer(&mut self, token: u64, answer: Answer, now: Instant) -> Option<EndedSession> {
        let session = self.sessions.get_mut(&token)?;
        session.take_answer(answer, now);
        if session.awaits_answers() {
            return None;
        }
        self.sessions.remove(&token)
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session still lingering, answered or not (shutdown).
    pub fn drain(&mut self) -> IntoValues<u64, EndedSession> {
        std::mem::take(&mut self.sessions).into_values()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::config::Config;
    use crate::policy::Policy;
    use crate::score::{ClientScore, HeloCheck};
    use crate::smtp::SessionRecord;
    use crate::verdict::{ClientJudge, Rules};

    const IP: &str = "192.0.2.9";

    /// A session ended with its score request out and, with `helo`, its HELO check too.
    fn awaiting(now: Instant, helo: bool) -> EndedSession {
        let rules = Rules::new(&Config::default());
        let policy = Arc::new(Policy::parse("", "policy.toml").unwrap());
        let mut judge = ClientJudge::new(policy, &rules);
        judge.score_requested(now, &rules);
        if helo {
            judge.helo_check_asked(true);
        }
        let peer = format!("{IP}:25").parse().unwrap();
        let record = SessionRecord::default();
        let session = EndedSession::new("x".into(), peer, SystemTime::now(), judge, None, record);
        assert!(session.awaits_answers());
        session
    }

    fn score(token: u64) -> Answer {
        Answer::Client {
            token,
            score: ClientScore {
                ip: IP.parse().unwrap(),
                dnsbl: Vec::new(),
                score: 0,
                rdns: None,
                fcrdns: false,
                rdns_checked: true,
                timed_out: false,
            },
        }
    }

    fn helo(token: u64) -> Answer {
        Answer::Helo {
            token,
            check: HeloCheck {
                ip: IP.parse().unwrap(),
                helo: "mx.example.net".into(),
                resolves_to_client: Some(true),
            },
        }
    }

    /// Session 1 awaits its score and its HELO check, session 2 its score.
    fn two_lingering(now: Instant) -> Lingering {
        let mut lingering = Lingering::default();
        lingering.insert(1, awaiting(now, true));
        lingering.insert(2, awaiting(now, false));
        lingering
    }

    #[test]
    fn a_session_is_handed_back_with_its_last_answer() {
        let now = Instant::now();
        let mut lingering = two_lingering(now);
        assert!(
            lingering.answer(1, score(1), now).is_none(),
            "HELO still owed"
        );
        assert!(lingering.answer(1, helo(1), now).is_some());
        assert!(lingering.answer(1, helo(1), now).is_none(), "gone");
        assert!(lingering.answer(3, score(3), now).is_none(), "never there");
        assert!(!lingering.is_empty());
        assert!(lingering.answer(2, score(2), now).is_some());
        assert!(lingering.is_empty());
    }

    #[test]
    fn drain_hands_out_what_is_left() {
        let mut lingering = two_lingering(Instant::now());
        assert_eq!(lingering.drain().count(), 2);
        assert!(lingering.is_empty());
        assert_eq!(lingering.drain().count(), 0);
    }
}
