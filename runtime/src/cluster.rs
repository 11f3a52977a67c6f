//! One topology over several processes: timely's cluster (`CommunicationConfig::Cluster`), with
//! weir's rules for starting it and for losing a peer.
//!
//! Every process runs `topology.workers` workers; worker `w` of process `p` is global worker
//! `p * workers + w`. The sources spread the partitions over all of them
//! ([`weir_connectors::kafka::source::owner_of`]), the feature store exchanges rows by entity
//! across processes, and each feature vector goes back to its partition's owner to be
//! micro-batched, scored, sunk and committed there: a process commits only what it read.
//!
//! **Start.** Process `i` listens on `peers[i]`, connects to every lower-indexed peer and waits
//! for every higher-indexed one (timely's handshake: the connecting side sends its index, a
//! big-endian u64). Unlike timely's own start (retrying forever), weir gives up after
//! `cluster.connect_timeout` and names the peers it could not reach.
//!
//! **Losing a peer.** Timely clusters are not elastic: a connection that breaks makes timely's
//! network thread panic. weir turns that panic into an exit: it logs which process was lost
//! (index and address), commits nothing more (offsets are only ever committed for what the
//! sinks acknowledged), and exits with [`EXIT_PEER_LOST`] so that a supervisor restarts the
//! whole set; the restarted set resumes from the committed offsets and the snapshots.
//!
//! ```no_run
//! use std::time::Duration;
//! use weir_runtime::cluster::{execute, Peers};
//! let peers = Peers {
//!     process: 0,
//!     addresses: vec!["127.0.0.1:7100".into(), "127.0.0.1:7101".into()],
//!     connect_timeout: Duration::from_secs(30),
//! };
//! let guards = execute(Some(&peers), 1, |worker| worker.index()).unwrap();
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::logging::{CommunicationEvent, CommunicationEventBuilder, CommunicationSetup};
use timely::communication::{Hooks, WorkerGuards};
use timely::logging_core::Logger;
use timely::worker::Worker;

/// Exit status of a process that lost a peer of its cluster (the others' exit status too, as
/// each notices).
pub const EXIT_PEER_LOST: i32 = 3;

/// The processes of a cluster, as this one sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// This process's index into `addresses`.
    pub process: usize,
    /// Every process's `host:port`, in process order.
    pub addresses: Vec<String>,
    /// How long to wait for every peer at start.
    pub connect_timeout: Duration,
}

impl Peers {
    /// The peers of `[cluster]`, or `None` for one process.
    pub fn of(cluster: &weir_topologies::config::ClusterSection) -> Option<Self> {
        (cluster.peers.len() > 1).then(|| Self {
            process: cluster.process,
            addresses: cluster.peers.clone(),
            connect_timeout: cluster.connect_timeout,
        })
    }

    /// The global indexes of this process's `workers` workers.
    pub fn local_workers(&self, workers: usize) -> std::ops::Range<usize> {
        self.process * workers..(self.process + 1) * workers
    }
}

/// Errors forming a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This process cannot listen on its own address.
    #[error("cannot listen on {address} (cluster.peers[{process}], this process): {source}")]
    Listen {
        /// This process's index.
        process: usize,
        /// Its address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Peers did not connect (or could not be reached) within the timeout.
    #[error(
        "cluster peers not reached within {timeout:?} (cluster.connect_timeout): {}; every process of the cluster must be started, each with its own --process",
        missing.iter().map(|(i, a, why)| format!("process {i} at {a} ({why})")).collect::<Vec<_>>().join(", ")
    )]
    Unreachable {
        /// The timeout.
        timeout: Duration,
        /// `(index, address, why)` of each peer missing.
        missing: Vec<(usize, String, String)>,
    },
    /// Timely refused the connections.
    #[error("cluster networking failed: {0}")]
    Timely(String),
}

/// The addresses of the peers, for the panic hook's message.
static ADDRESSES: OnceLock<Vec<String>> = OnceLock::new();

/// Bytes this process's timely send threads wrote to its peers (headers included).
static BYTES_SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes this OS process sent to cluster peers so far, headers included: every data and
/// progress message of every dataflow (what crosses the network).
pub fn bytes_sent() -> u64 {
    BYTES_SENT.load(Ordering::Relaxed)
}

/// Timely's communication logging, reduced to a byte count of the messages sent.
fn count_bytes(setup: CommunicationSetup) -> Option<Logger<CommunicationEventBuilder>> {
    setup.sender.then(|| {
        Logger::new(
            Instant::now(),
            Duration::ZERO,
            |_, batch: &mut Option<Vec<(Duration, CommunicationEvent)>>| {
                if let Some(events) = batch {
                    let sent: usize = events
                        .iter()
                        .filter_map(|(_, e)| match e {
                            CommunicationEvent::Message(m) if m.is_send => Some(m.header.required_bytes()),
                            _ => None,
                        })
                        .sum();
                    BYTES_SENT.fetch_add(sent as u64, Ordering::Relaxed);
                    events.clear();
                }
            },
        )
    })
}

/// Turns a panic of timely's network threads (`timely:send-N` / `timely:recv-N`: the
/// connection to process N broke) into a logged exit with [`EXIT_PEER_LOST`]. Installed once.
fn install_peer_loss_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            let peer = name
                .strip_prefix("timely:recv-")
                .or_else(|| name.strip_prefix("timely:send-"))
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(peer) = peer {
                let address = ADDRESSES
                    .get()
                    .and_then(|a| a.get(peer).cloned())
                    .unwrap_or_else(|| "?".into());
                let cause = info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tracing::error!(
                    peer_process = peer,
                    peer_address = %address,
                    cause = %cause,
                    exit_status = EXIT_PEER_LOST,
                    "lost cluster peer: stopping without committing anything unacknowledged; restart the whole set"
                );
                eprintln!(
                    "weir: lost cluster peer process {peer} at {address} ({cause}); exiting with status {EXIT_PEER_LOST} so that the set is restarted"
                );
                std::process::exit(EXIT_PEER_LOST);
            }
            previous(info);
        }));
    });
}

/// Connects this process to its peers with timely's handshake, within the timeout: one stream
/// per peer in process order, `None` at this process's own index.
///
/// # Errors
/// [`ClusterError`] naming this address or the peers not reached.
pub fn connect(peers: &Peers) -> Result<Vec<Option<TcpStream>>, ClusterError> {
    let me = peers.process;
    let deadline = Instant::now() + peers.connect_timeout;
    let listener = TcpListener::bind(&peers.addresses[me]).map_err(|source| ClusterError::Listen {
        process: me,
        address: peers.addresses[me].clone(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ClusterError::Timely(e.to_string()))?;
    let mut sockets: Vec<Option<TcpStream>> = (0..peers.addresses.len()).map(|_| None).collect();
    let mut last_error: Vec<String> = vec!["never connected".into(); peers.addresses.len()];
    loop {
        // Lower indexes: connect (they listen); higher: accept.
        for (i, address) in peers.addresses.iter().enumerate().take(me) {
            if sockets[i].is_some() {
                continue;
            }
            let attempt = resolve(address).and_then(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)));
            match attempt {
                Ok(mut s) => {
                    s.set_nodelay(true).ok();
                    s.write_all(&(me as u64).to_be_bytes())
                        .map_err(|e| ClusterError::Timely(format!("handshake with {address}: {e}")))?;
                    tracing::info!(peer_process = i, peer_address = %address, "connected to cluster peer");
                    sockets[i] = Some(s);
                }
                Err(e) => last_error[i] = e.to_string(),
            }
        }
        loop {
            match listener.accept() {
                Ok((mut s, from)) => {
                    s.set_nonblocking(false).ok();
                    s.set_nodelay(true).ok();
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut b = [0u8; 8];
                    let index = s.read_exact(&mut b).map(|()| u64::from_be_bytes(b) as usize);
                    s.set_read_timeout(None).ok();
                    match index {
                        Ok(i) if i > me && i < sockets.len() && sockets[i].is_none() => {
                            tracing::info!(peer_process = i, peer = %from, "cluster peer connected");
                            sockets[i] = Some(s);
                        }
                        other => {
                            tracing::warn!(peer = %from, handshake = ?other.ok(), "refused a connection that is not an expected cluster peer")
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(ClusterError::Timely(format!("accept on {}: {e}", peers.addresses[me]))),
            }
        }
        let missing: Vec<(usize, String, String)> = (0..sockets.len())
            .filter(|i| *i != me && sockets[*i].is_none())
            .map(|i| {
                let why = if i < me {
                    last_error[i].clone()
                } else {
                    "has not connected".to_string()
                };
                (i, peers.addresses[i].clone(), why)
            })
            .collect();
        if missing.is_empty() {
            return Ok(sockets);
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Unreachable {
                timeout: peers.connect_timeout,
                missing,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn resolve(address: &str) -> std::io::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Runs `func` on `workers` worker threads: in this process alone (`peers` `None`), or as
/// process `peers.process` of a cluster, once every peer is connected.
///
/// # Errors
/// A message: the cluster could not form ([`ClusterError`]), or timely refused to start.
pub fn execute<T, F>(peers: Option<&Peers>, workers: usize, func: F) -> Result<WorkerGuards<T>, String>
where
    T: Send + 'static,
    F: Fn(&mut Worker) -> T + Send + Sync + 'static,
{
    let Some(peers) = peers else {
        return timely::execute(timely::Config::process(workers), func);
    };
    let sockets = connect(peers).map_err(|e| e.to_string())?;
    let _ = ADDRESSES.set(peers.addresses.clone());
    install_peer_loss_hook();
    let hooks = Hooks {
        log_fn: Arc::new(count_bytes),
        ..Hooks::default()
    };
    let process = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(process, sockets, peers.process, workers, hooks)
        .map_err(|e| ClusterError::Timely(e.to_string()).to_string())?;
    tracing::info!(
        process = peers.process,
        processes = peers.addresses.len(),
        workers_per_process = workers,
        "cluster formed"
    );
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    timely::execute::execute_from(builders, Box::new(guard), timely::WorkerConfig::default(), func)
}
