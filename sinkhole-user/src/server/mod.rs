//! The daemon's event loop: one thread, mio, every socket non-blocking.
//!
//! The loop accepts (refusing blocked clients and clients over a limit at once), moves bytes
//! between sockets and [`Session`]s, answers the sessions' events, and keeps deadlines in a
//! timer wheel. It never waits for anything but `epoll`: messages go to the capture thread and
//! score requests to the resolver thread, whose answers come back through channels and the one
//! [`Waker`]. Recipient verdicts (score, then policy) come from [`crate::verdict`]; the loop's
//! side of them is in [`decisions`].

mod addresses;
mod capture_budget;
pub mod connection;
mod decisions;
mod ended;
pub mod limits;
mod lingering;
mod log_batch;
mod resolver_token;
pub mod timer;
pub mod tls;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::campaign::alert::{Counted, Tracker};
use crate::campaign::features::Key;
use crate::capture::floor::Space;
use crate::capture::session_log::{SessionEnd, Verdict, session_id};
use crate::capture::{Capture, CaptureError, Job, StoreRequest, Stored, Ticket};
use crate::config::{Config, ConfigError};
use crate::counters::DaemonCounters;
use crate::handover;
use crate::kernel::{Blocker, Blocking, SynTable, XdpEvents};
use crate::listeners;
use crate::notify::Notifier;
use crate::policy::Phase;
use crate::policy::PolicyStore;
use crate::policy::auto_close::Delivery;
use crate::score::{Resolver, ScoreCounters, ScoreError};
use crate::smtp::{self, CloseReason, Event, Reply, Session, SessionConfig};
use crate::verdict::{Ask, ClientJudge, Rules};
use addresses::Addresses;
use capture_budget::{CaptureBudget, MAX_IN_FLIGHT};
use connection::{Connection, FlushOutcome, ReadOutcome};
use ended::EndedSession;
use limits::{Limits, Refusal};
use lingering::Lingering;
use log_batch::LogBatch;
use resolver_token::token;
use timer::{TimerEntry, TimerWheel};

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// The inotify watch on `policy.addresses_dir`.
const ADDRESSES: Token = Token(usize::MAX - 2);
/// The XDP program's ring buffer of events.
const XDP_EVENTS: Token = Token(usize::MAX - 3);
/// Listener `i` has token `LISTENER_BASE - i`; connection tokens are slab keys, far below.
const LISTENER_BASE: usize = usize::MAX - 4;

/// Reads per connection per wake-up before the loop serves the others (fairness).
const READS_PER_TURN: usize = 16;
/// Bytes read per connection per wake-up before the loop serves the others: a body streams in
/// full reads, each also written to its file, and a hundred clients sending endless bodies
/// must not keep a new client from its banner (16 full reads each made a turn of 100 MiB).
const BYTES_PER_TURN: usize = 2 * smtp::MAX_RECEIVE;
/// Resolver answers taken per wake-up before the loop serves its connections: the answers of
/// thousands of clients can come at once (a DNS outage noticed releases every waiting query),
/// and each may end a session and write its log line.
const ANSWERS_PER_TURN: usize = 32;
/// How long shutdown waits for in-flight messages and unsent 421s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// After a takeover, how long the replaced daemon lets its open sessions go on (their clients
/// finish them) before it ends those left as a shutdown does, with 421.
const HANDOVER_DRAIN: Duration = Duration::from_secs(10);
/// After `accept` failed for want of descriptors or memory, when to try again (sooner when a
/// connection closes).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("policy: {0}")]
    Policy(#[from] ConfigError),
    #[error("policy.addresses_dir: {0}")]
    Addresses(io::Error),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error("STARTTLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
}

/// The daemon, set up and ready to [`Server::run`].
pub struct Server {
    poll: Poll,
    listeners: Vec<TcpListener>,
    signals: Signals,
    conns: Slab<Connection>,
    wheel: TimerWheel,
    limits: Limits,
    blocker: Box<dyn Blocker>,
    /// The SYN fingerprints the XDP program records, when it is attached.
    syn: Option<SynTable>,
    /// The XDP program's own events, logged as they come, when it is attached.
    xdp_events: Option<XdpEvents>,
    /// Scores clients (DNSBL, reverse DNS) and checks HELO names, on its own thread.
    resolver: Resolver,
    /// The policy in force; each session keeps the one current at its accept.
    policy: PolicyStore,
    /// The per-address files, in force for every session at its next recipient.
    addresses: Addresses,
    rules: Rules,
    capture: Capture,
    /// Stored messages coming back from the capture thread, a sync's worth at a time.
    stored: Receiver<Vec<Stored>>,
    session_config: Arc<SessionConfig>,
    /// STARTTLS (always offered: a self-signed pair when none is configured).
    tls: Arc<rustls::ServerConfig>,
    counters: Arc<DaemonCounters>,
    scratch: Vec<u8>,
    /// Messages with the capture threads.
    capture_budget: CaptureBudget,
    serial: u64,
    /// Connections left with input still waiting after their turn (slot, serial).
    ready: Vec<(usize, u64)>,
    /// The resolver may have answers not taken yet (its waker fired, or a turn's share ran out).
    answers_waiting: bool,
    /// Set once a stop signal came: the instant by which everything is closed.
    stopping: Option<Instant>,
    /// Set when a stop signal came from a daemon that took over: until then, open sessions go
    /// on; then they are shut down.
    draining: Option<Instant>,
    /// Closed sessions whose score or HELO check is still with the resolver.
    lingering: Lingering,
    /// Finished sessions not yet handed to the capture thread.
    logs: LogBatch,
    /// Set when `accept` failed with clients still queued: the listeners are edge-triggered
    /// and send no new event for those, so the loop tries again by then.
    accept_retry: Option<Instant>,
    /// `smtp.busy_poll`: how long after its last event the loop polls without sleeping.
    busy_poll: Duration,
    /// The service manager, when there is one (`$NOTIFY_SOCKET`).
    notifier: Option<Notifier>,
    /// Where the pid file says which daemon is the service's main process.
    storage: PathBuf,
    /// Sessions per campaign key, for the alerts.
    campaigns: Tracker,
    /// `campaign.alert_window`, as the alerts say it.
    campaign_window: Duration,
}

impl Server {
    /// The part of start-up that may need privileges: binds every listen address, reads the
    /// policy and the TLS key, installs the signal handlers. Starts no thread, so that what the
    /// daemon gives up before [`Bound::start`] (privileges, files, system calls) binds every
    /// thread it has.
    pub fn bind(config: &Config) -> Result<Bound, ServerError> {
        let policy = PolicyStore::open(&config.policy)?;
        let tls = tls::server_config(config)?;
        let poll = Poll::new()?;
        let mut listeners = Vec::with_capacity(config.smtp.listen.len());
        for (i, &addr) in config.smtp.listen.iter().enumerate() {
            let mut listener =
                listeners::bind(addr).map_err(|source| ServerError::Listen { addr, source })?;
            poll.registry().register(
                &mut listener,
                Token(LISTENER_BASE - i),
                Interest::READABLE,
            )?;
            listeners.push(listener);
        }
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        // mio allows one waker per poll: the capture and resolver threads share it.
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Bound {
            poll,
            listeners,
            signals,
            waker,
            policy,
            tls,
        })
    }
}

/// The daemon with its sockets open and its policy read, no thread started yet.
pub struct Bound {
    poll: Poll,
    listeners: Vec<TcpListener>,
    signals: Signals,
    waker: Arc<Waker>,
    policy: PolicyStore,
    tls: Arc<rustls::ServerConfig>,
}

impl Bound {
    /// The addresses bound (port 0 resolved).
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(TcpListener::local_addr).collect()
    }

    /// Prepares storage and starts the capture and resolver threads: the daemon, ready to
    /// [`Server::run`], putting the clients it wants gone into `blocking`'s blocker, taking
    /// each connection's SYN fingerprint from its table and logging the XDP program's events.
    /// Tells `notifier`, when there is one, of reloads and the stop.
    pub fn start(
        self,
        config: &Config,
        blocking: Blocking,
        notifier: Option<Notifier>,
    ) -> Result<Server, ServerError> {
        let Blocking {
            blocker,
            syn,
            events: xdp_events,
        } = blocking;
        let Bound {
            poll,
            listeners,
            signals,
            waker,
            policy,
            tls,
        } = self;
        let resolver = Resolver::spawn(&config.dnsbl, Arc::clone(&waker))?;
        let addresses = Addresses::open(&config.policy, poll.registry(), ADDRESSES, &waker)
            .map_err(ServerError::Addresses)?;
        if let Some(events) = &xdp_events {
            events.register(poll.registry(), XDP_EVENTS)?;
        }
        let counters = Arc::new(DaemonCounters::default());
        // Read by `Server::bind`, and it is running: that read succeeded.
        counters.policy_read(true, SystemTime::now());
        let (stored_tx, stored) = mpsc::channel();
        let capture = Capture::start(
            &config.storage,
            &config.smtp.hostname,
            Arc::clone(&counters),
            move |outcomes| {
                // The loop outlives the thread; if it is gone there is no one left to tell.
                if stored_tx.send(outcomes).is_ok() {
                    let _ = waker.wake();
                }
            },
        )?;
        let smtp = &config.smtp;
        Ok(Server {
            poll,
            listeners,
            signals,
            conns: Slab::with_capacity(smtp.max_connections.get().min(65_536)),
            wheel: TimerWheel::new(Instant::now()),
            limits: Limits::new(
                smtp.max_connections.get(),
                smtp.max_connections_per_ip.get(),
            ),
            blocker,
            syn,
            xdp_events,
            resolver,
            policy,
            addresses,
            rules: Rules::new(config),
            capture,
            stored,
            session_config: Arc::new(SessionConfig {
                hostname: smtp.hostname.clone(),
                max_message_bytes: smtp.max_message_bytes,
                max_recipients: smtp.max_recipients.get(),
                max_junk_commands: smtp.max_junk_commands.get(),
                idle_timeout: smtp.idle_timeout,
                greet_wait: smtp.greet_wait,
                starttls: true,
                keep_bodies: config.storage.capture,
            }),
            tls,
            counters,
            scratch: vec![0; smtp::MAX_RECEIVE],
            capture_budget: CaptureBudget::new(MAX_IN_FLIGHT),
            serial: 0,
            ready: Vec::new(),
            answers_waiting: false,
            stopping: None,
            draining: None,
            lingering: Lingering::default(),
            logs: LogBatch::new(Instant::now()),
            accept_retry: None,
            busy_poll: smtp.busy_poll,
            notifier,
            storage: config.storage.dir.clone(),
            campaigns: Tracker::new(&config.campaign, Instant::now()),
            campaign_window: config.campaign.alert_window,
        })
    }
}

impl Server {
    /// Tells the service manager `state`, when there is one.
    pub fn notify(&self, state: &str) {
        if let Some(notifier) = &self.notifier {
            notifier.notify(state);
        }
    }

    /// The counters, for whoever reports them.
    pub fn counters(&self) -> Arc<DaemonCounters> {
        Arc::clone(&self.counters)
    }

    /// The resolver's counters, for whoever reports them.
    pub fn score_counters(&self) -> Arc<ScoreCounters> {
        Arc::clone(self.resolver.counters())
    }

    /// Serves until SIGTERM or SIGINT, then shuts down cleanly: no new connections, every
    /// session told 421 (after its pending message is stored), the session log written out.
    /// SIGHUP reloads the policy; SIGUSR1 reopens the session log.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut due = Vec::new();
        let mut ready = Vec::new();
        let mut last_sweep = Instant::now();
        let mut last_event = Instant::now();
        loop {
            let before = Instant::now();
            let timeout = self.poll_timeout(before, last_event);
            if timeout != Some(Duration::ZERO) || self.logs.is_due(before) {
                // The loop may sleep now: what it holds for the log goes out first.
                self.send_logs();
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let now = Instant::now();
            if !events.is_empty() {
                last_event = now;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        self.take_stored(now);
                        self.answers_waiting = true;
                        self.addresses.take_book();
                    }
                    ADDRESSES => self.addresses.watch_ready(),
                    XDP_EVENTS => {
                        if let Some(events) = &mut self.xdp_events {
                            events.drain();
                        }
                    }
                    SIGNALS => {
                        let (mut reload, mut stop) = (false, false);
                        for signal in self.signals.pending() {
                            match signal {
                                SIGHUP => reload = true,
                                SIGUSR1 => self.capture.reopen_log(),
                                _ => stop = true,
                            }
                        }
                        if reload {
                            self.notify("RELOADING=1");
                            self.reload_policy();
                            self.notify("READY=1");
                        }
                        if stop {
                            match self.stopping {
                                None => self.begin_shutdown(now),
                                // A second signal: stop waiting for slow clients.
                                Some(_) => self.stopping = Some(now),
                            }
                        }
                    }
                    Token(t) if t > LISTENER_BASE - self.listeners.len() && t <= LISTENER_BASE => {
                        self.accept_all(LISTENER_BASE - t, now);
                    }
                    Token(slot) => {
                        if let Some(conn) = self.conns.get_mut(slot) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                conn.mark_readable();
                            }
                            self.drive(slot, now);
                        }
                    }
                }
            }
            if self.answers_waiting {
                self.answers_waiting = self.take_answers(now, ANSWERS_PER_TURN);
            }
            // Connections that used up their turn go on after everyone else had one.
            std::mem::swap(&mut ready, &mut self.ready);
            for (slot, serial) in ready.drain(..) {
                if self.conns.get(slot).is_some_and(|c| c.serial() == serial) {
                    self.drive(slot, now);
                }
            }
            self.expire_timers(now, &mut due);
            if self.accept_retry.is_some_and(|at| at <= now) {
                self.retry_accept(now);
            }
            if now.duration_since(last_sweep) >= Duration::from_secs(5) {
                last_sweep = now;
                if let Err(e) = self.blocker.sweep() {
                    tracing::warn!("sweeping the block table: {e}");
                }
                self.counters.campaigns_active.store(
                    self.campaigns.active(now),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            if self.draining.is_some_and(|until| now >= until) {
                self.draining = None;
                self.shut_sessions_down(now);
            }
            if let Some(grace) = self.stopping {
                // Sessions waiting for the resolver get their answers (within dnsbl.timeout).
                if self.conns.is_empty() && self.lingering.is_empty() {
                    break;
                }
                if now >= grace {
                    self.force_close_all();
                    break;
                }
            }
        }
        self.finish_lingering();
        self.send_logs();
        tracing::info!("stopped; writing out the session log");
        self.capture.finish();
        Ok(())
    }

    /// How long the next poll may sleep. Not at all while connections or resolver answers wait
    /// for their turn, nor for `busy_poll` after the last event: a client in mid-conversation
    /// (the next command of an SMTP exchange comes tens of microseconds after our reply) is then
    /// served without the cost of waking the thread, which on a loaded machine is most of a
    /// round trip. But not while messages are with the capture threads: those are then what the
    /// clients wait for, and they need the CPU a polling loop would take (their outcomes wake
    /// the loop anyway).
    fn poll_timeout(&self, now: Instant, last_event: Instant) -> Option<Duration> {
        let polling =
            self.capture_budget.is_idle() && now.duration_since(last_event) < self.busy_poll;
        if !self.ready.is_empty() || self.answers_waiting || polling {
            return Some(Duration::ZERO);
        }
        [
            self.wheel.next_wake(),
            self.stopping,
            self.draining,
            self.accept_retry,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    fn accept_all(&mut self, index: usize, now: Instant) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.accept(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors or memory: what stays queued is tried again soon.
                    DaemonCounters::add(&self.counters.accept_errors, 1);
                    if self.accept_retry.is_none() {
                        tracing::warn!("accept: {e}; trying again in {ACCEPT_RETRY:?}");
                    }
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Accepts what queued while `accept` was failing; stays in retry mode (without logging
    /// again) until every listener is drained.
    fn retry_accept(&mut self, now: Instant) {
        self.accept_retry = Some(now + ACCEPT_RETRY);
        let errors = DaemonCounters::get(&self.counters.accept_errors);
        for index in 0..self.listeners.len() {
            self.accept_all(index, now);
        }
        if DaemonCounters::get(&self.counters.accept_errors) == errors {
            self.accept_retry = None;
        }
    }

    fn accept(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let ip = peer.ip().to_canonical();
        if self.blocker.is_blocked(ip) {
            DaemonCounters::add(&self.counters.refused_blocked, 1);
            self.log_closed_at_accept(peer, Verdict::Blocked, None);
            return;
        }
        if let Err(refusal) = self.limits.admit(ip) {
            let counter = match refusal {
                Refusal::Total => &self.counters.refused_max_connections,
                Refusal::PerIp => &self.counters.refused_per_ip,
            };
            DaemonCounters::add(counter, 1);
            // A fresh socket has room for one line; if not, the client hears nothing.
            let _ = stream.write(refusal.reply());
            self.log_closed_at_accept(peer, Verdict::Refused, Some(refusal.reply()));
            return;
        }
        let syn = self.take_syn(peer);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(slot), Interest::READABLE)
        {
            tracing::warn!("register {peer}: {e}");
            self.limits.release(ip);
            return;
        }
        DaemonCounters::add(&self.counters.connections_total, 1);
        DaemonCounters::add(&self.counters.connections_active, 1);
        self.serial += 1;
        let judge = ClientJudge::new(self.policy.current(), &self.rules);
        let started = SystemTime::now();
        let mut session = Session::new(Arc::clone(&self.session_config), now);
        // Whatever is already waiting came before the banner (pregreet).
        let (early, readable) = match stream.read(&mut self.scratch) {
            Ok(n) => (n, true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
            Err(_) => (0, true),
        };
        smtp::accept(&mut session, &self.scratch[..early], now);
        let mut conn =
            Connection::new(stream, session, judge, peer, self.serial, started, readable);
        conn.set_syn(syn);
        let conn = entry.insert(conn);
        // The banner goes out before the score is asked for: asking may wake the resolver's
        // thread, a system call and on a busy machine a context switch that the client should
        // not wait for. Unless the banner waits for the score (a `connect` rule looks at it),
        // or early commands may need it.
        let score_first = early > 0
            || conn
                .judge()
                .waits_for_score(Phase::Connect, self.addresses.book());
        if score_first {
            self.request_score(slot, now);
        }
        // The decision on the connection, and the banner out. (What the flush leaves, and any
        // error, `drive` meets again.)
        smtp::settle(&mut Slot::new(self, slot, now));
        if !score_first {
            self.request_score(slot, now);
        }
        self.drive(slot, now);
    }

    /// Asks the resolver for the score of the client in `slot`. Busy (too many outstanding) is
    /// counted by the resolver; the client goes unscored.
    fn request_score(&mut self, slot: usize, now: Instant) {
        let conn = &mut self.conns[slot];
        let ip = conn.client_ip();
        if self
            .resolver
            .request(token(slot, conn.serial()), ip)
            .is_ok()
        {
            conn.judge_mut().score_requested(now, &self.rules);
        }
    }

    /// The SYN fingerprint of `peer`'s connection, when the XDP program recorded one.
    fn take_syn(&mut self, peer: SocketAddr) -> Option<crate::syn::Syn> {
        let syn = self.syn.as_mut()?.take(peer);
        let counter = match syn {
            Some(_) => &self.counters.syn_found,
            None => &self.counters.syn_missing,
        };
        DaemonCounters::add(counter, 1);
        syn
    }

    /// Moves a connection as far as it can go now: answers its events, writes its output,
    /// reads while the session wants input, closes it when it is over. The session is driven
    /// through [`smtp::settle`] and [`smtp::receive`], with [`Slot`] as their host.
    fn drive(&mut self, slot: usize, now: Instant) {
        // The scratch buffer is lent out while the slot is: `drive` never runs inside itself.
        let mut scratch = std::mem::take(&mut self.scratch);
        debug_assert_eq!(scratch.len(), smtp::MAX_RECEIVE);
        // The disk floor: below storage.min_free new transactions are refused.
        let short_of_space = self.capture.space() != Space::Ample;
        self.conns[slot]
            .session_mut()
            .refuse_new_mail(short_of_space);
        let mut host = Slot::new(self, slot, now);
        smtp::settle(&mut host);
        let (mut reads, mut bytes) = (0, 0);
        loop {
            let Slot {
                server, flushed, ..
            } = &mut host;
            let conn = &mut server.conns[slot];
            match flushed {
                FlushOutcome::Broken => {
                    server.close(slot);
                    break;
                }
                FlushOutcome::Blocked => {
                    conn.watch_writable(server.poll.registry(), Token(slot), true);
                }
                FlushOutcome::Done => {
                    conn.watch_writable(server.poll.registry(), Token(slot), false);
                    if conn.is_over() {
                        server.close(slot);
                        break;
                    }
                }
            }
            if !conn.wants_read() {
                server.schedule(slot);
                break;
            }
            if reads == READS_PER_TURN || bytes >= BYTES_PER_TURN {
                // More input is waiting: serve the other connections first.
                server.ready.push((slot, conn.serial()));
                server.schedule(slot);
                break;
            }
            reads += 1;
            match conn.read(&mut scratch) {
                // TLS records that made no plaintext yet may still need an answer (handshake).
                ReadOutcome::Data(0) => smtp::settle(&mut host),
                ReadOutcome::Data(n) => {
                    bytes += n;
                    smtp::receive(&mut host, &scratch[..n], now);
                }
                ReadOutcome::Drained => {
                    server.schedule(slot);
                    break;
                }
                ReadOutcome::Closed => {
                    conn.mark_peer_closed();
                    smtp::settle(&mut host);
                }
            }
        }
        self.scratch = scratch;
    }

    /// Keeps one timer entry per connection at (or before) its next deadline: the session's,
    /// or that of a held recipient reply.
    fn schedule(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if let Some(at) = conn.reschedule() {
            self.wheel.insert(TimerEntry {
                slot,
                serial: conn.serial(),
                at,
            });
        }
    }

    fn expire_timers(&mut self, now: Instant, due: &mut Vec<TimerEntry>) {
        due.clear();
        let conns = &self.conns;
        self.wheel.expire(now, due, |entry| {
            conns
                .get(entry.slot)
                .is_some_and(|conn| conn.holds_timer(entry))
        });
        for entry in due.drain(..) {
            // Serving an earlier entry cannot close this connection, but the loop must not
            // panic if that ever changes.
            let Some(conn) = self.conns.get_mut(entry.slot) else {
                continue;
            };
            conn.timer_fired();
            let session = conn.session_mut();
            if session.deadline() <= now {
                session.handle_timeout(now);
            }
            self.release_held(entry.slot, now, false);
            self.drive(entry.slot, now);
        }
    }

    fn handle_event(&mut self, slot: usize, event: Event, now: Instant) {
        match event {
            Event::Connect => self.decide(slot, Ask::Connect, now),
            Event::Helo { .. } => self.decide(slot, Ask::Helo, now),
            Event::Mail { mail_from } => self.decide(slot, Ask::Mail { mail_from }, now),
            Event::Recipient { mail_from, rcpt } => {
                self.decide(slot, Ask::Rcpt { mail_from, rcpt }, now);
            }
            Event::Message {
                mail_from,
                rcpts,
                size,
            } => {
                let ask = Ask::Data {
                    mail_from,
                    rcpts,
                    size,
                };
                self.decide(slot, ask, now);
            }
            Event::Discard => self.conns[slot].discard_message(),
            Event::StartTls => {
                let conn = &mut self.conns[slot];
                match rustls::ServerConnection::new(Arc::clone(&self.tls)) {
                    Ok(tls) => conn.start_tls(tls),
                    Err(e) => {
                        tracing::warn!(
                            session = %conn.id(),
                            "session {}: cannot start TLS: {e}; closing",
                            conn.id()
                        );
                        conn.fail_tls(format!("cannot start TLS: {e}"), now);
                    }
                }
            }
        }
    }

    /// Body bytes of a connection's message: on to its file (see [`Connection::append_body`]).
    fn take_body(&mut self, slot: usize, chunk: &[u8]) {
        // Without capture the session hands out no body bytes.
        if let Some(maildir) = self.capture.maildir() {
            self.conns[slot].append_body(maildir, chunk);
        }
    }

    /// The end of a message the policy accepted: its file (written as the body came) goes to the
    /// capture threads to be made durable and named, and the client hears 250 only once it is.
    fn store_message(
        &mut self,
        slot: usize,
        mail_from: String,
        rcpts: Vec<String>,
        size: u64,
        now: Instant,
    ) {
        let conn = &mut self.conns[slot];
        let Some(maildir) = self.capture.maildir() else {
            self.counters.count_message(size);
            conn.session_mut()
                .resolve_message(reply(250, "2.0.0 Ok"), None, now);
            self.delivered(slot, &rcpts);
            return;
        };
        let file = match conn.finish_message(maildir, mail_from, &rcpts).finish() {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(
                    session = %conn.id(),
                    "cannot store a message of session {}: {e}",
                    conn.id()
                );
                DaemonCounters::add(&self.counters.capture_failed, 1);
                conn.session_mut()
                    .resolve_message(storage_error(), None, now);
                return;
            }
        };
        if !self.capture_budget.try_reserve() {
            DaemonCounters::add(&self.counters.capture_busy, 1);
            conn.session_mut().resolve_message(busy(), None, now);
            return;
        }
        let request = StoreRequest {
            ticket: Ticket {
                slot,
                serial: conn.serial(),
            },
            session_id: conn.id().to_string(),
            size,
            file,
        };
        if self.capture.submit(Job::Store(request)) {
            conn.mark_capturing(now, rcpts);
        } else {
            self.capture_budget.release();
            DaemonCounters::add(&self.counters.capture_busy, 1);
            conn.session_mut().resolve_message(busy(), None, now);
        }
    }

    /// Answers the messages the capture thread has finished with.
    fn take_stored(&mut self, now: Instant) {
        while let Ok(outcomes) = self.stored.try_recv() {
            for stored in outcomes {
                self.answer_stored(stored, now);
            }
        }
    }

    fn answer_stored(&mut self, stored: Stored, now: Instant) {
        self.capture_budget.release();
        let Some(conn) = self.conns.get_mut(stored.ticket.slot) else {
            return;
        };
        if conn.serial() != stored.ticket.serial {
            return;
        }
        let rcpts = match conn.capture_answered(now) {
            Some((waited, rcpts)) => {
                let commit = &self.counters.histograms.commit_seconds;
                commit.observe(waited.as_secs_f64());
                rcpts
            }
            None => Vec::new(),
        };
        let answer = match stored.name {
            Some(name) => {
                self.counters.count_message(stored.size);
                let text = format!("2.0.0 Ok: queued as {name}");
                (reply(250, &text), Some(name))
            }
            None => (storage_error(), None),
        };
        let delivered = answer.1.is_some();
        conn.session_mut().resolve_message(answer.0, answer.1, now);
        if delivered {
            self.delivered(stored.ticket.slot, &rcpts);
        }
        self.drive(stored.ticket.slot, now);
    }

    /// A message of the connection in `slot` was delivered to `rcpts`: `auto_close` counts it.
    fn delivered(&mut self, slot: usize, rcpts: &[String]) {
        let conn = &self.conns[slot];
        let delivery = Delivery {
            client: conn.client_ip(),
            listed: conn
                .judge()
                .score()
                .is_some_and(|s| s.blocking_zones().next().is_some()),
            at: SystemTime::now(),
        };
        let policy = self.policy.current();
        self.addresses
            .delivered(&policy, rcpts, delivery, &self.counters);
    }

    fn begin_shutdown(&mut self, now: Instant) {
        self.accept_retry = None;
        // Connections waiting in a listener's queue go to the daemon taking over, if any
        // (net.ipv4.tcp_migrate_req: see crate::listeners).
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // A daemon taking over is the main process now: its service is not stopping, and the
        // sessions open here are let finish.
        if !handover::names_this_process(&self.storage) {
            tracing::info!(
                "taken over: {} session(s) open here may go on for {}s",
                self.conns.len(),
                HANDOVER_DRAIN.as_secs()
            );
            self.draining = Some(now + HANDOVER_DRAIN);
            self.stopping = Some(now + HANDOVER_DRAIN + SHUTDOWN_GRACE);
            return;
        }
        tracing::info!("stopping: {} session(s) open", self.conns.len());
        self.notify("STOPPING=1");
        self.stopping = Some(now + SHUTDOWN_GRACE);
        self.shut_sessions_down(now);
    }

    /// Every open session says 421 (after its message in flight, if any) and ends.
    fn shut_sessions_down(&mut self, now: Instant) {
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            // Held replies go out now: nobody waits for a score or a stall any longer.
            self.release_held(slot, now, true);
            self.conns[slot].session_mut().shutdown(now);
            self.drive(slot, now);
        }
    }

    fn force_close_all(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        DaemonCounters::add(&self.counters.shutdown_forced_closes, slots.len() as u64);
        for slot in slots {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        let conn = self.conns.remove(slot);
        let record = conn.session().record();
        self.counters.replies.add_session(&record.replies);
        if record.closed_by == Some(CloseReason::JunkCommands) {
            DaemonCounters::add(&self.counters.junk_limit, 1);
        }
        DaemonCounters::add(
            &self.counters.storage_refusals,
            conn.session().storage_refusals().into(),
        );
        // A descriptor is free again: a waiting client may have it.
        if self.accept_retry.is_some() {
            self.accept_retry = Some(Instant::now());
        }
        self.limits.release(conn.client_ip());
        let sessions = &self.counters.histograms.session_seconds;
        sessions.observe(conn.age().as_secs_f64());
        self.counters
            .connections_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let token = token(slot, conn.serial());
        let ended = conn.end();
        if ended.awaits_answers() {
            self.lingering.insert(token, ended);
        } else {
            self.finish_session(ended);
        }
    }

    /// Merges the session's signatures, escalates, closes the addresses it closes, and logs it.
    fn finish_session(&mut self, ended: EndedSession) {
        let signatures = ended.signatures();
        let policy = self.policy.current();
        self.addresses.session_ended(
            &policy,
            ended.accepted_rcpts(),
            &signatures,
            SystemTime::now(),
            &self.counters,
        );
        if let Some(escalation) = ended.escalation(&self.rules, &signatures) {
            self.block_client(ended.client_ip(), &escalation);
        }
        if ended.went_unscored() {
            DaemonCounters::add(&self.counters.unscored, 1);
        }
        self.count_campaign(&ended.campaign_key(&signatures));
        self.log_session(ended.into_log(signatures));
    }

    /// Counts a session into its campaign key; logs the key once at WARN when it crosses
    /// `campaign.alert_sessions` within `campaign.alert_window`.
    fn count_campaign(&mut self, key: &Key) {
        let now = Instant::now();
        match self.campaigns.add(key, now) {
            Counted::NoCampaign => return,
            Counted::Refused => {
                DaemonCounters::add(&self.counters.campaign_keys_refused, 1);
                return;
            }
            Counted::Counted => {}
            Counted::Alert(alert) => {
                tracing::warn!(
                    "new campaign {}: {} sessions within {} ({} since first seen): {}",
                    alert.id,
                    alert.sessions,
                    humantime::format_duration(self.campaign_window),
                    alert.total,
                    alert.features
                );
                self.counters.campaigns_active.store(
                    self.campaigns.active(now),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
        DaemonCounters::add(&self.counters.campaign_sessions, 1);
    }

    /// At the end of the shutdown grace: sessions still waiting for an answer are logged with
    /// what they have.
    fn finish_lingering(&mut self) {
        for session in self.lingering.drain() {
            self.finish_session(session);
        }
    }

    /// Logs a connection closed right after accept; `said` is the line it was sent, if any.
    fn log_closed_at_accept(&mut self, peer: SocketAddr, verdict: Verdict, said: Option<&[u8]>) {
        self.serial += 1;
        let now = SystemTime::now();
        let id = session_id(now, self.serial);
        self.log_session(SessionEnd::closed_at_accept(id, peer, now, verdict, said));
    }

    fn log_session(&mut self, session: SessionEnd) {
        if let Some(batch) = self.logs.push(session, Instant::now()) {
            self.submit_logs(batch);
        }
    }

    /// Hands what the log batch holds to the capture thread, due or not.
    fn send_logs(&mut self) {
        if let Some(batch) = self.logs.take() {
            self.submit_logs(batch);
        }
    }

    fn submit_logs(&mut self, batch: Vec<SessionEnd>) {
        let lines = batch.len() as u64;
        if !self.capture.submit(Job::Log(batch)) {
            DaemonCounters::add(&self.counters.session_log_dropped, lines);
        }
    }
}

/// One connection of the server as the host of its session ([`smtp::Host`]): events go to
/// the loop's handlers, output to the socket, and the flush's outcome is kept for
/// [`Server::drive`] to act on (closing, or waiting to write).
struct Slot<'a> {
    server: &'a mut Server,
    slot: usize,
    now: Instant,
    flushed: FlushOutcome,
}

impl<'a> Slot<'a> {
    fn new(server: &'a mut Server, slot: usize, now: Instant) -> Self {
        Slot {
            server,
            slot,
            now,
            flushed: FlushOutcome::Done,
        }
    }
}

impl smtp::Host for Slot<'_> {
    fn session(&mut self) -> &mut Session {
        self.server.conns[self.slot].session_mut()
    }

    fn body(&mut self, chunk: &[u8]) {
        self.server.take_body(self.slot, chunk);
    }

    fn event(&mut self, event: Event) {
        self.server.handle_event(self.slot, event, self.now);
    }

    fn flush(&mut self) {
        self.server.ask_helo(self.slot);
        self.flushed = self.server.conns[self.slot].flush();
    }
}

fn reply(code: u16, text: &str) -> Reply {
    Reply {
        code,
        text: text.to_string(),
    }
}

fn storage_error() -> Reply {
    reply(451, "4.3.0 Local storage error, try again later")
}

fn busy() -> Reply {
    reply(451, "4.3.0 Too busy to store the message, try again later")
}
