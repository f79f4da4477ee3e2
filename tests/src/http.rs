//! A minimal HTTP/1.1 server for the test doubles that speak plain HTTP (the
//! token issuer, the update service): a thread per connection, one request per
//! connection, `Connection: close` on every answer.
//!
//! Not tiny_http: its pool gives each connection a task that lasts as long as
//! the client keeps the connection alive, and when connections arrive together
//! it can queue one behind an idle kept-alive connection (it counts a waiting
//! thread that another task has already taken). That request was then answered
//! only when reqwest's pool dropped the idle connection, 90 s later, which made
//! a registry test take 92 s one run in six. It also drops a `Connection: close`
//! given in a response, so it cannot be told to close.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A request as the handler sees it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header lines, name and value, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: Vec<u8>,
    /// The connection breaks off halfway through the body, whose whole
    /// length the head announced.
    pub broken: bool,
}

impl Reply {
    /// `status` with `body` of `content_type`.
    pub fn new(status: u16, content_type: Option<&'static str>, body: Vec<u8>) -> Self {
        Reply {
            status,
            content_type,
            body,
            broken: false,
        }
    }
}

/// The request head (up to and including the blank line) and any body bytes read
/// with it; `None` when the client sent no HTTP (a TLS probe) or went away.
pub fn read_head(client: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = client.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if !buf[0].is_ascii_uppercase() {
            return None;
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = buf.split_off(end + 4);
            return Some((buf, body));
        }
        if buf.len() > 64 << 10 {
            return None;
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let (head, mut body) = read_head(stream)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    }
}

/// A server on a free loopback port; stops when dropped.
pub struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves every request with `handler`.
    pub fn start(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, handler) = (stop.clone(), Arc::new(handler));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let Some(request) = read_request(&mut stream) else {
                        return;
                    };
                    let reply = handler(&request);
                    let mut head = format!(
                        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        reply.status,
                        reason(reply.status),
                        reply.body.len()
                    );
                    if let Some(t) = reply.content_type {
                        head.push_str(&format!("Content-Type: {t}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    let sent = if reply.broken {
                        reply.body.len() / 2
                    } else {
                        reply.body.len()
                    };
                    let _ = stream.write_all(&reply.body[..sent]);
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
        });
        Ok(Server {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
