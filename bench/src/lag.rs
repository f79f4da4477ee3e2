//! A TCP proxy that delays every byte by a fixed time each way, as a registry
//! across a WAN does. A catalog's thousands of small requests cost round trips
//! there, which a registry on loopback does not have; this shows them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

/// A delaying proxy on a free loopback port.
pub struct LagProxy {
    port: u16,
}

impl LagProxy {
    /// Forwards every connection to `target` (`host:port`), each way `one_way`
    /// later than it came.
    pub fn start(target: &str, one_way: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let target = target.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                // A delayed segment must not wait on Nagle for the one before.
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(to_client), Ok(to_server)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || delayed(client, to_server, one_way));
                std::thread::spawn(move || delayed(server, to_client, one_way));
            }
        });
        Ok(LagProxy { port })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Copies `from` to `to`, each read `delay` after it arrived; a writer thread
/// keeps the reads going meanwhile, so the delay adds latency, not a limit on
/// throughput.
fn delayed(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (send, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (at, bytes) in due {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if send
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(send);
    let _ = writer.join();
}
