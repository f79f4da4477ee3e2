//! A TCP proxy that stalls a transfer at a chosen byte, so a test can kill a process
//! in the middle of a download or upload at a known point — no sleeps, no races.
//!
//! The proxy forwards connections to a real registry. Once more than the threshold
//! of bytes has flowed in the watched direction, it stops forwarding, reports that it
//! is stalled ([`SlowProxy::wait_stalled`]), and holds the connection until
//! [`SlowProxy::release`].
//!
//! [`Gate`] forwards only connections from one source address, so a registry can
//! be made reachable through an HTTP proxy alone (one that binds its outgoing
//! connections to that address), as on a site where only the proxy may leave.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Which direction is counted and stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the registry to the client (a download).
    Download,
    /// From the client to the registry (an upload).
    Upload,
}

/// The counters and flags shared by the pumps, with the condition they signal on.
type Shared = Arc<(Mutex<State>, Condvar)>;

#[derive(Default)]
struct State {
    counted: u64,
    stalled: bool,
    released: bool,
}

/// A stalling proxy on a free loopback port.
pub struct SlowProxy {
    port: u16,
    shared: Shared,
}

impl SlowProxy {
    /// Forwards to `target` (`host:port`), stalling after `threshold` bytes in `direction`.
    pub fn start(target: &str, direction: Direction, threshold: u64) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared: Shared = Arc::default();
        let target = target.to_string();
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone(), server.try_clone());
                let (Ok(c2), Ok(s2)) = (c2, s2) else { continue };
                let (down, up) = (s.clone(), s.clone());
                let watch_down = direction == Direction::Download;
                std::thread::spawn(move || {
                    pump(server, c2, watch_down.then_some((down, threshold)))
                });
                std::thread::spawn(move || {
                    pump(client, s2, (!watch_down).then_some((up, threshold)))
                });
            }
        });
        Ok(SlowProxy { port, shared })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Blocks until the transfer stalled, or fails after `timeout`.
    pub fn wait_stalled(&self, timeout: Duration) -> Result<()> {
        let (lock, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut st = lock.lock().expect("proxy state");
        while !st.stalled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the transfer did not reach the stall point ({} bytes seen)",
                    st.counted
                );
            }
            st = cv.wait_timeout(st, left).expect("proxy state").0;
        }
        Ok(())
    }

    /// Lets every transfer through from now on.
    pub fn release(&self) {
        let (lock, cv) = &*self.shared;
        lock.lock().expect("proxy state").released = true;
        cv.notify_all();
    }
}

/// A port in front of a registry that closes every connection not coming from
/// one source address.
pub struct Gate {
    port: u16,
    counts: Arc<[AtomicU32; 2]>,
}

impl Gate {
    /// Forwards connections from `allowed` to `target` (`host:port`), TLS or not.
    pub fn start(target: &str, allowed: IpAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let counts: Arc<[AtomicU32; 2]> = Arc::default();
        let (target, c) = (target.to_string(), counts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if client.peer_addr().map(|a| a.ip()).ok() != Some(allowed) {
                    c[1].fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                c[0].fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pump(server, c2, None));
                std::thread::spawn(move || pump(client, s2, None));
            }
        });
        Ok(Gate { port, counts })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections let through so far.
    pub fn passed(&self) -> u32 {
        self.counts[0].load(Ordering::SeqCst)
    }

    /// Connections closed so far for coming from elsewhere.
    pub fn refused(&self) -> u32 {
        self.counts[1].load(Ordering::SeqCst)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, watch: Option<(Shared, u64)>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((shared, threshold)) = &watch {
            let (lock, cv) = &**shared;
            let mut st = lock.lock().expect("proxy state");
            st.counted += n as u64;
            if st.counted > *threshold && !st.released {
                st.stalled = true;
                cv.notify_all();
                while !st.released {
                    st = cv.wait(st).expect("proxy state");
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
