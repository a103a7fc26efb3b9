//! The loop's side of scoring and policy: score answers attached to their connections, the
//! HELO check, the decisions the sessions ask for (the connection, HELO, MAIL, recipients,
//! messages) given, held (waiting for the score, or stalled) and released, blocks made, and the
//! policy reloaded on SIGHUP. The verdicts themselves come from
//! [`ClientJudge`](crate::verdict::ClientJudge).

use std::net::IpAddr;
use std::time::Instant;

use super::Server;
use super::resolver_token::{token, token_matches, token_slot};
use crate::counters::DaemonCounters;
use crate::policy::Phase;
use crate::smtp::Reply;
use crate::verdict::{Ask, Escalation, Held};

impl Server {
    /// A decision a session asked for: now, or once the score is in (at most until it is due).
    pub(super) fn decide(&mut self, slot: usize, ask: Ask, now: Instant) {
        let judge = self.conns[slot].judge_mut();
        if judge.awaits_score(ask.phase(), self.addresses.book(), now) && self.stopping.is_none() {
            // The session holds further input meanwhile; `schedule` arms the score deadline.
            judge.hold_for_score(ask);
            return;
        }
        self.answer(slot, ask, now);
    }

    /// Decides with what is known now and gives the reply (or holds it for a stall).
    fn answer(&mut self, slot: usize, ask: Ask, now: Instant) {
        let conn = &mut self.conns[slot];
        let decision = conn.decide(&self.rules, self.addresses.book(), &ask, now);
        if let Some(until) = decision.stall_until
            && self.stopping.is_none()
        {
            conn.judge_mut()
                .hold_stall(until, decision.reply, ask.phase());
            return;
        }
        if let Some(escalation) = decision.block {
            conn.judge_mut().mark_escalated();
            let ip = conn.client_ip();
            if self.block_client(ip, &escalation) {
                // Its packets are dropped from now on (or it is closed at accept): end the
                // session once the refusal is out.
                self.conns[slot].mark_peer_closed();
            }
        }
        match ask {
            Ask::Data {
                mail_from,
                rcpts,
                size,
            } if decision.reply.code < 300 => self.store_message(slot, mail_from, rcpts, size, now),
            ask => self.give(slot, ask.phase(), decision.reply, now),
        }
    }

    /// Gives the session the reply to its decision at `phase`; at `data` a refusal (the
    /// message, written as it came, is dropped).
    fn give(&mut self, slot: usize, phase: Phase, reply: Reply, now: Instant) {
        let conn = &mut self.conns[slot];
        if phase == Phase::Data {
            conn.discard_message();
            conn.session_mut().resolve_message(reply, None, now);
        } else {
            conn.session_mut().resolve(reply, now);
        }
    }

    /// Gives a held reply whose time has come (or any held reply, with `force`, at shutdown).
    pub(super) fn release_held(&mut self, slot: usize, now: Instant, force: bool) {
        let judge = self.conns[slot].judge_mut();
        let held = if force {
            judge.take_held()
        } else {
            judge.take_held_due(now)
        };
        match held {
            Some(Held::Score(ask)) => {
                tracing::debug!(
                    "session {}: no DNSBL score within dnsbl.timeout; deciding unscored",
                    self.conns[slot].id()
                );
                self.answer(slot, ask, now);
            }
            Some(Held::Stall { reply, phase, .. }) => self.give(slot, phase, reply, now),
            None => {}
        }
    }

    /// Attaches the resolver's answers to their connections (a recipient waiting for its
    /// score is decided at once), or to sessions that ended while an answer was out (logged
    /// once the last one is in). At most `limit`: true when there may be more.
    pub(super) fn take_answers(&mut self, now: Instant, limit: usize) -> bool {
        for _ in 0..limit {
            let Some(answer) = self.resolver.try_recv() else {
                return false;
            };
            let token = answer.token();
            let slot = token_slot(token);
            if self
                .conns
                .get(slot)
                .is_some_and(|conn| token_matches(token, conn.serial()))
            {
                let judge = self.conns[slot].judge_mut();
                judge.take_answer(answer, now);
                if let Some(ask) = judge.take_scored() {
                    self.answer(slot, ask, now);
                    self.drive(slot, now);
                }
            } else if let Some(ended) = self.lingering.answer(token, answer, now) {
                self.finish_session(ended);
            }
        }
        true
    }

    /// Asks for the check of the session's HELO name, once it is known (the first name only).
    pub(super) fn ask_helo(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if !conn.judge().wants_helo_check() {
            return;
        }
        let Some(helo) = conn.session().record().helo.as_deref() else {
            return;
        };
        // Busy is counted by the resolver.
        let taken = self
            .resolver
            .check_helo(token(slot, conn.serial()), conn.peer().ip(), helo)
            .is_ok();
        conn.judge_mut().helo_check_asked(taken);
    }

    /// Puts `ip` into the drop map for `dnsbl.block_ttl`; true when it is blocked now.
    pub(super) fn block_client(&mut self, ip: IpAddr, escalation: &Escalation) -> bool {
        match self
            .blocker
            .block(ip, self.rules.block_ttl, &escalation.reason)
        {
            Ok(true) => {
                DaemonCounters::add(self.counters.blocks(escalation.source), 1);
                tracing::info!(
                    client = %ip,
                    reason = %escalation.reason,
                    "blocked {ip} for {} ({})",
                    humantime::format_duration(self.rules.block_ttl),
                    escalation.reason
                );
                true
            }
            Ok(false) => {
                DaemonCounters::add(&self.counters.blocks_allow_listed, 1);
                tracing::debug!(
                    client = %ip,
                    reason = %escalation.reason,
                    "not blocking {ip} ({}): xdp.allow",
                    escalation.reason
                );
                false
            }
            Err(e) => {
                DaemonCounters::add(&self.counters.block_errors, 1);
                tracing::warn!(
                    client = %ip,
                    reason = %escalation.reason,
                    "cannot block {ip} ({}): {e}",
                    escalation.reason
                );
                false
            }
        }
    }

    /// SIGHUP: the policy file again, parsed whole before it replaces the old rules; and every
    /// per-address file again (on the addresses thread).
    pub(super) fn reload_policy(&mut self) {
        self.addresses.rescan();
        let result = self.policy.reload();
        self.counters
            .policy_read(result.is_ok(), std::time::SystemTime::now());
        match result {
            Ok(()) => tracing::info!(
                "policy reloaded: {} rule(s), for sessions from now on",
                self.policy.current().rule_count()
            ),
            Err(e) => {
                tracing::error!("policy reload failed; the previous rules stay in force: {e}")
            }
        }
    }
}
