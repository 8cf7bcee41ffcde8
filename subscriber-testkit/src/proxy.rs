//! [`FaultProxy`]: a TCP proxy on loopback that cuts its connections when a test says so, or on a
//! schedule, to put a network fault between a worker and Redis, or between clients and a server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy on a loopback port in front of `target`. [`cut`](Self::cut) drops every open
/// connection at once (both sides see the connection end, as when a network path dies);
/// [`cut_for`](Self::cut_for) also refuses new connections for a while (each is accepted and
/// dropped at once), as during an outage; [`schedule`](Self::schedule) repeats outages.
///
/// ```
/// use std::time::Duration;
/// use switchboard::testing::{FaultProxy, MockRedis};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let redis = MockRedis::start().await;
/// let proxy = FaultProxy::start(redis.addr()).await?;
/// let url = format!("redis://{}", proxy.addr()); // give this to the worker
/// proxy.cut_for(Duration::from_millis(200));       // a 200 ms outage, starting now
/// assert_eq!(proxy.cuts(), 1);
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    /// Bumped by every cut: a connection opened before the bump ends.
    generation: watch::Sender<u64>,
    /// New connections are refused until then.
    refuse_until: Mutex<Option<Instant>>,
    open: AtomicUsize,
    accepted: AtomicU64,
    cuts: AtomicU64,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl FaultProxy {
    /// Starts a proxy to `target` on a free loopback port.
    ///
    /// # Errors
    /// Binding the port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            generation: watch::Sender::new(0),
            refuse_until: Mutex::new(None),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection now; new ones go through.
    pub fn cut(&self) {
        self.shared.cuts.fetch_add(1, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Drops every open connection now and refuses new ones for `outage`.
    pub fn cut_for(&self, outage: Duration) {
        *self
            .shared
            .refuse_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + outage);
        self.cut();
    }

    /// `times` outages of `outage` each, one every `every` (the first after `every`), on a task
    /// of their own; await the handle to know they are over.
    pub fn schedule(&self, every: Duration, outage: Duration, times: usize) -> JoinHandle<()> {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            for _ in 0..times {
                tokio::time::sleep(every).await;
                *shared
                    .refuse_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + outage);
                shared.cuts.fetch_add(1, Ordering::SeqCst);
                shared.generation.send_modify(|g| *g += 1);
                tokio::time::sleep(outage).await;
            }
        })
    }

    /// How many cuts so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections let through so far (refused ones not counted).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let refusing = shared
            .refuse_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until);
        if refusing {
            drop(inbound);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(pipe(inbound, shared.clone()));
    }
}

/// Copies both ways until either side closes or a cut comes.
async fn pipe(mut inbound: TcpStream, shared: Arc<Shared>) {
    let mut generation = shared.generation.subscribe();
    generation.mark_unchanged();
    let Ok(mut outbound) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    shared.open.fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = generation.changed() => {
            // A cut: both sides get a reset, not a polite close, as when a path dies.
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
    }
    shared.open.fetch_sub(1, Ordering::SeqCst);
}
