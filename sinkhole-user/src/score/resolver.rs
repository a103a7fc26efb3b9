//! The resolver thread and the loop's handle on it: requests go in over a channel, answers come
//! back over another and wake the loop's `mio::Waker`.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::RetryDnsHandle;
use hickory_resolver::system_conf::read_system_conf;
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};
use tokio::sync::mpsc as async_mpsc;

use super::Answer;
use super::counters::ScoreCounters;
use super::lookup::{Dns, Scorer};
use crate::config::DnsblConfig;

/// How much the resolver takes on. Every answer waits for the loop to receive it, so
/// `outstanding` bounds both channels and the tasks in between.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests sent and not yet received back; beyond it `request`/`check_helo` say [`Busy`].
    pub outstanding: usize,
    /// DNS queries in flight at once; one beyond it waits for a slot, and when none comes
    /// free before the request's deadline it is not sent and counts as no answer.
    pub in_flight: usize,
    /// Entries in each answer cache: (address, zone) and reverse DNS by address.
    pub cache_entries: NonZeroUsize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            outstanding: 16_384,
            in_flight: 512,
            cache_entries: NonZeroUsize::new(65_536).expect("non-zero"),
        }
    }
}

/// The request was not taken: too many outstanding (or the resolver thread is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the resolver is busy")]
pub struct Busy;

/// The resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("cannot set up the DNS resolver: {0}")]
    Dns(#[from] NetError),
    #[error("cannot start the resolver thread: {0}")]
    Thread(#[from] std::io::Error),
}

struct Request {
    token: u64,
    ip: IpAddr,
    /// When the loop asked: the deadline is this plus `dnsbl.timeout`.
    at: Instant,
    helo: Option<String>,
}

/// The loop's handle on the resolver thread. Dropping it stops the thread.
pub struct Resolver {
    requests: Option<async_mpsc::UnboundedSender<Request>>,
    answers: mpsc::Receiver<Answer>,
    wake: Arc<Wake>,
    outstanding: AtomicUsize,
    limits: Limits,
    counters: Arc<ScoreCounters>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts the resolver thread with the default [`Limits`].
    pub fn spawn(config: &DnsblConfig, waker: Arc<mio::Waker>) -> Result<Resolver, ScoreError> {
        Self::spawn_with_limits(config, waker, Limits::default())
    }

    /// Starts the resolver thread: `dnsbl.nameservers` (UDP, then TCP for truncated answers)
    /// or, when empty, the name servers of `/etc/resolv.conf`. DNS only: `/etc/hosts` and
    /// RFC 6761's `localhost` shortcuts do not apply, so loopback clients are scored by DNS too.
    pub fn spawn_with_limits(
        config: &DnsblConfig,
        waker: Arc<mio::Waker>,
        limits: Limits,
    ) -> Result<Resolver, ScoreError> {
        let counters = Arc::new(ScoreCounters::new(&config.zone));
        let (request_tx, request_rx) = async_mpsc::unbounded_channel();
        let (answer_tx, answer_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let wake = Arc::new(Wake {
            waker,
            pending: AtomicBool::new(false),
        });
        let thread_wake = wake.clone();
        let config = config.clone();
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("sinkhole-dns".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(ScoreError::Thread(error)));
                        return;
                    }
                };
                // hickory spawns its connection tasks on the runtime it is built in.
                let scorer = match runtime.block_on(async { build_dns(&config, &limits) }) {
                    Ok((dns, try_timeout)) => Scorer::new(
                        dns,
                        &config.zone,
                        config.timeout,
                        try_timeout,
                        limits.in_flight,
                        limits.cache_entries,
                        thread_counters,
                    ),
                    Err(error) => {
                        let _ = ready_tx.send(Err(ScoreError::Dns(error)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(serve(Arc::new(scorer), request_rx, answer_tx, thread_wake));
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ScoreError::Thread(std::io::Error::other(
                    "the resolver thread died starting",
                )));
            }
        }
        Ok(Resolver {
            requests: Some(request_tx),
            answers: answer_rx,
            wake,
            outstanding: AtomicUsize::new(0),
            limits,
            counters,
            thread: Some(thread),
        })
    }

    /// Asks for `ip`'s [`ClientScore`](super::ClientScore), answered as [`Answer::Client`] with `token` within
    /// `dnsbl.timeout` from now. Never blocks.
    pub fn request(&self, token: u64, ip: IpAddr) -> Result<(), Busy> {
        self.send(token, ip, None)
    }

    /// Asks whether `helo` resolves to `ip`, answered as [`Answer::Helo`] with `token` within
    /// `dnsbl.timeout` from now. Never blocks.
    pub fn check_helo(&self, token: u64, ip: IpAddr, helo: &str) -> Result<(), Busy> {
        self.send(token, ip, Some(helo.to_owned()))
    }

    /// The next answer, if one is ready. Call it until `None` whenever the waker fires.
    pub fn try_recv(&self) -> Option<Answer> {
        let answer = match self.answers.try_recv() {
            Ok(answer) => answer,
            Err(_) => {
                // Drained: the next answer must wake the loop again. Saying so before looking
                // once more leaves no answer sent in between without a wake-up.
                self.wake.pending.store(false, Ordering::SeqCst);
                self.answers.try_recv().ok()?
            }
        };
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        Some(answer)
    }

    /// The counters, shared with the resolver thread (metrics read them).
    pub fn counters(&self) -> &Arc<ScoreCounters> {
        &self.counters
    }

    fn send(&self, token: u64, ip: IpAddr, helo: Option<String>) -> Result<(), Busy> {
        let refuse = || {
            ScoreCounters::bump(&self.counters.refused_busy);
            Busy
        };
        if self.outstanding.load(Ordering::Relaxed) >= self.limits.outstanding {
            return Err(refuse());
        }
        let request = Request {
            token,
            ip: ip.to_canonical(),
            at: Instant::now(),
            helo,
        };
        let sender = self.requests.as_ref().ok_or_else(refuse)?;
        sender.send(request).map_err(|_| refuse())?;
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // Closing the request channel ends `serve`; the runtime's drop cancels what is left.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How the resolver thread wakes the loop: once per batch of answers, not once per answer
/// (a system call each; thousands of answers can come at once when an outage is noticed).
struct Wake {
    waker: Arc<mio::Waker>,
    /// A wake-up is on its way and the loop has not yet found the channel empty since.
    pending: AtomicBool,
}

impl Wake {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst)
            && let Err(error) = self.waker.wake()
        {
            tracing::error!("cannot wake the event loop: {error}");
        }
    }
}

/// The resolver thread's loop: one task per request.
async fn serve(
    scorer: Arc<Scorer>,
    mut requests: async_mpsc::UnboundedReceiver<Request>,
    answers: mpsc::Sender<Answer>,
    wake: Arc<Wake>,
) {
    while let Some(request) = requests.recv().await {
        let scorer = scorer.clone();
        let answers = answers.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            let deadline = request.at + scorer.timeout;
            let answer = match request.helo {
                None => Answer::Client {
                    token: request.token,
                    score: scorer.score(request.ip, deadline).await,
                },
                Some(helo) => Answer::Helo {
                    token: request.token,
                    check: scorer.check_helo(request.ip, &helo, deadline).await,
                },
            };
            // The loop may be gone (shutting down): then nobody needs the answer.
            if answers.send(answer).is_ok() {
                wake.wake();
            }
        });
    }
}

/// The name server pool and the time it gives each try of a query.
fn build_dns(config: &DnsblConfig, limits: &Limits) -> Result<(Dns, Duration), NetError> {
    let (servers, mut options) = if config.nameservers.is_empty() {
        let (system, options) = read_system_conf()?;
        (system.name_servers().to_vec(), options)
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|server| {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut ns.connections {
                    connection.port = server.port();
                }
                ns
            })
            .collect();
        (servers, ResolverOpts::default())
    };
    // A lost UDP datagram (a busy server's full socket buffer) must not cost the whole
    // deadline: each try gets an equal share of it, so the retries fit inside `dnsbl.timeout`.
    let attempts = options.attempts.max(2);
    let try_timeout = config.timeout / (attempts as u32 + 1);
    options.timeout = try_timeout;
    options.max_active_requests = limits.in_flight;
    let context = Arc::new(PoolContext::new(options, TlsConfig::new()?));
    let pool = NameServerPool::from_config(servers, context, TokioRuntimeProvider::default());
    Ok((RetryDnsHandle::new(pool, attempts), try_timeout))
}
