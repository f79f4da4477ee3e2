//! An HTTP proxy in front of a real registry that fails chosen requests, to test
//! that clients survive the failures registries really have: a 500, a 429 with
//! `Retry-After`, a connection reset in the middle of an upload.
//!
//! Every request is forwarded on a connection of its own (`Connection: close`), so
//! the proxy only has to read request heads: the rest of each exchange is piped.
//! A fault is armed for the Nth request (from the moment it is armed) whose method
//! is `method` and whose path contains `path`; no timing is involved, so a test
//! knows exactly which request fails. A [`Hold`] holds chosen requests back
//! until enough of them are under way at once, which shows how many a client
//! sends at once without timing either.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

/// What a faulty request gets instead of the registry's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `500 Internal Server Error`, after the request body was read.
    ServerError,
    /// `429 Too Many Requests` with `Retry-After: 1`, after the body was read.
    TooManyRequests,
    /// The connection is reset once half of the request body arrived (a request
    /// without a body is reset after its head).
    Reset,
    /// `404 Not Found` with Harbor's body for a push into a project that does
    /// not exist.
    NoSuchProject,
    /// `401 Unauthorized` with quay.io's body for a repository name deeper than
    /// it allows (see [`FaultProxy::refuse_names_deeper_than`]).
    TooDeep,
    /// `401 Unauthorized`, after the body was read: a token that expired
    /// between two requests of one upload.
    Expired,
    /// `404 Not Found` with `BLOB_UPLOAD_UNKNOWN`, distribution's answer for an
    /// upload session it does not know (see
    /// [`FaultProxy::forget_upload_sessions`]).
    UploadUnknown,
    /// `404 Not Found` with a registry's error document (`MANIFEST_UNKNOWN`):
    /// how a registry with the referrers API (Harbor) answers for a subject
    /// it does not know, unlike distribution 2.8's plain 404 for a route it
    /// does not have.
    ReferrersUnknown,
    /// `200 OK` with the first page of a tag list (the tag `1` alone) and a
    /// `Link` to the next, as Quay and Docker Hub page their lists.
    PagedTags,
    /// `200 OK` with a tag list without a `Link` that lacks the tag `1`: a
    /// registry that cuts its list short without saying so.
    TagsCutShort,
    /// `200 OK` with a tag list of exactly 100 tags, `1` among them, without
    /// a `Link`: as long as a page.
    TagsPageLong,
    /// `200 OK` with the tag list (`1`) of another repository.
    TagsOfAnother,
    /// `405 Method Not Allowed`, as a registry without the referrers API may
    /// answer its route.
    NotAllowed,
    /// The registry's answer, its body cut off halfway and the connection
    /// closed: a download broken in the middle, as a load balancer or a
    /// network that drops connections breaks one. Halfway by its
    /// `Content-Length`, which registries send with blobs: an answer without
    /// one gets its head alone.
    CutAnswer,
}

#[derive(Debug)]
struct Rule {
    method: String,
    path: String,
    /// Matching requests still to let through before the fault; `None` once a
    /// one-time fault was served.
    countdown: Option<u32>,
    /// Every matching request gets the fault, not only the Nth.
    forever: bool,
    fault: Fault,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    served: u32,
    /// Repository names with more path components are refused, as Quay does.
    max_depth: Option<usize>,
    /// Cross-repository mounts reach the registry as plain upload starts.
    decline_mounts: bool,
    /// Upload sessions are not closed without bytes.
    forget_sessions: bool,
    holds: Vec<Hold>,
}

/// How long a [`Hold`] holds a request before it gives up waiting for the
/// others: a client that never sends enough at once fails its test in this
/// time instead of hanging it.
const HOLD_PATIENCE: Duration = Duration::from_secs(60);

/// Holds every request whose method and path match back, before it is
/// forwarded, until `at_once` are held together; then lets those and all later
/// ones through (see [`FaultProxy::hold_until_at_once`]).
#[derive(Clone, Debug)]
pub struct Hold {
    method: String,
    path: String,
    at_once: usize,
    state: Arc<(Mutex<HoldState>, Condvar)>,
}

#[derive(Debug, Default)]
struct HoldState {
    held: Vec<String>,
    most_held: usize,
    /// The paths held together when they were let through.
    released: Option<Vec<String>>,
    gave_up: bool,
}

impl Hold {
    /// The paths of the requests held together when they were let through;
    /// `None` while they are still held (or once one waited [`HOLD_PATIENCE`]
    /// in vain).
    pub fn released(&self) -> Option<Vec<String>> {
        self.state.0.lock().expect("hold").released.clone()
    }

    /// The most requests held at once.
    pub fn most_held(&self) -> usize {
        self.state.0.lock().expect("hold").most_held
    }

    /// Lets the requests held, and all later ones, through now.
    pub fn release(&self) {
        let (lock, released_cv) = &*self.state;
        let mut g = lock.lock().expect("hold");
        if g.released.is_none() {
            g.released = Some(std::mem::take(&mut g.held));
        }
        released_cv.notify_all();
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        method == self.method && path.contains(&self.path)
    }

    /// Waits, while requests are held, until enough are or patience runs out.
    fn pass(&self, path: &str) {
        let (lock, released_cv) = &*self.state;
        let mut g = lock.lock().expect("hold");
        if g.released.is_some() || g.gave_up {
            return;
        }
        g.held.push(path.to_string());
        g.most_held = g.most_held.max(g.held.len());
        if g.held.len() >= self.at_once {
            g.released = Some(std::mem::take(&mut g.held));
            released_cv.notify_all();
            return;
        }
        let deadline = Instant::now() + HOLD_PATIENCE;
        while g.released.is_none() && !g.gave_up {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                g.gave_up = true;
                released_cv.notify_all();
                break;
            }
            g = released_cv.wait_timeout(g, left).expect("hold").0;
        }
    }
}

/// A fault-injecting proxy on a free loopback port, plain HTTP.
pub struct FaultProxy {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// Forwards to `target` (`host:port`, plain HTTP).
    pub fn start(target: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state: Arc<Mutex<State>> = Arc::default();
        let (target, s) = (target.to_string(), state.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (target, s) = (target.clone(), s.clone());
                std::thread::spawn(move || serve(client, &target, &s));
            }
        });
        Ok(FaultProxy { port, state })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Answers the `nth` (1 for the next) `method` request whose path contains
    /// `path` with `fault`, once.
    pub fn fail_nth(&self, method: &str, path: &str, nth: u32, fault: Fault) {
        self.add(method, path, Some(nth.max(1) - 1), false, fault);
    }

    /// Answers every `method` request whose path contains `path` with `fault`.
    pub fn fail_always(&self, method: &str, path: &str, fault: Fault) {
        self.add(method, path, Some(0), true, fault);
    }

    fn add(&self, method: &str, path: &str, countdown: Option<u32>, forever: bool, fault: Fault) {
        self.state.lock().expect("proxy state").rules.push(Rule {
            method: method.to_string(),
            path: path.to_string(),
            countdown,
            forever,
            fault,
        });
    }

    /// Refuses every request about a repository whose name has more than `depth`
    /// path components as quay.io does: `401` with `UNAUTHORIZED`, the answer
    /// skopeo gets there for a name too deep, which says nothing about depth.
    pub fn refuse_names_deeper_than(&self, depth: usize) {
        self.state.lock().expect("proxy state").max_depth = Some(depth);
    }

    /// Declines every cross-repository mount as a registry that cannot make it
    /// does: the request goes on without `mount` and `from`, so the registry
    /// opens an upload session (202) instead. Counted as served faults.
    pub fn decline_mounts(&self) {
        self.state.lock().expect("proxy state").decline_mounts = true;
    }

    /// Answers every request closing an upload session without sending bytes
    /// (a `PUT` into `/blobs/uploads/` with no body) as a registry that no
    /// longer knows the session does: it expired, or the registry restarted
    /// with another secret (distribution signs its sessions' state).
    pub fn forget_upload_sessions(&self) {
        self.state.lock().expect("proxy state").forget_sessions = true;
    }

    /// Holds back every `method` request whose path contains `path` until
    /// `at_once` of them are held together; the returned [`Hold`] tells which
    /// were. A request that several holds match is held by the first armed.
    pub fn hold_until_at_once(&self, method: &str, path: &str, at_once: usize) -> Hold {
        let hold = Hold {
            method: method.to_string(),
            path: path.to_string(),
            at_once,
            state: Arc::default(),
        };
        self.state
            .lock()
            .expect("proxy state")
            .holds
            .push(hold.clone());
        hold
    }

    /// How many faults were served so far.
    pub fn served(&self) -> u32 {
        self.state.lock().expect("proxy state").served
    }
}

/// The repository a `/v2/NAME/{manifests,blobs,tags,referrers}/…` path is about.
fn repository(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|k| rest.find(k))
        .min()
        .map(|end| &rest[..end])
}

/// The fault for a request, if one is due; counts it.
fn due(state: &Mutex<State>, method: &str, path: &str, length: u64) -> Option<Fault> {
    let mut st = state.lock().expect("proxy state");
    let path = path.split('?').next().unwrap_or(path);
    if st.forget_sessions && method == "PUT" && path.contains("/blobs/uploads/") && length == 0 {
        st.served += 1;
        return Some(Fault::UploadUnknown);
    }
    if let (Some(max), Some(repo)) = (st.max_depth, repository(path))
        && repo.split('/').count() > max
    {
        st.served += 1;
        return Some(Fault::TooDeep);
    }
    let mut hit = None;
    for rule in &mut st.rules {
        if rule.method != method || !path.contains(&rule.path) {
            continue;
        }
        match rule.countdown {
            Some(0) => {
                if !rule.forever {
                    rule.countdown = None;
                }
                hit.get_or_insert(rule.fault);
            }
            Some(n) => rule.countdown = Some(n - 1),
            None => {}
        }
    }
    if hit.is_some() {
        st.served += 1;
    }
    hit
}

/// Whether mounts are declined; counts the one being declined.
fn declines_mounts(state: &Mutex<State>) -> bool {
    let mut st = state.lock().expect("proxy state");
    if st.decline_mounts {
        st.served += 1;
    }
    st.decline_mounts
}

/// A registry's JSON error answer with `status` (`404 Not Found`).
fn json_answer(status: &str, json: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
}

fn serve(mut client: TcpStream, target: &str, state: &Mutex<State>) {
    let Some((head, body)) = crate::http::read_head(&mut client) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (
        request_line.next().unwrap_or_default().to_string(),
        request_line.next().unwrap_or_default().to_string(),
    );
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let length = content_length(&headers);
    if let Some(fault) = due(state, &method, &path, length) {
        let wanted = match fault {
            Fault::Reset => length / 2,
            Fault::ServerError
            | Fault::TooManyRequests
            | Fault::NoSuchProject
            | Fault::TooDeep
            | Fault::Expired
            | Fault::UploadUnknown
            | Fault::ReferrersUnknown
            | Fault::PagedTags
            | Fault::TagsCutShort
            | Fault::TagsPageLong
            | Fault::TagsOfAnother
            | Fault::NotAllowed
            | Fault::CutAnswer => length,
        };
        let mut chunk = [0u8; 16 << 10];
        let mut got = body.len() as u64;
        while got < wanted {
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n as u64,
            }
        }
        let answer = match fault {
            // Closed with unread bytes pending, the socket sends a RST.
            Fault::Reset => return,
            Fault::CutAnswer => return forward(client, target, &method, &path, &headers, body, true),
            Fault::ServerError => {
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            }
            Fault::TooManyRequests => {
                let json = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                )
            }
            Fault::NoSuchProject => json_answer("404 Not Found", r#"{"errors":[{"code":"NOT_FOUND","message":"project mirror not found: project mirror not found"}]}"#),
            Fault::Expired => json_answer("401 Unauthorized", r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#),
            Fault::UploadUnknown => json_answer("404 Not Found", r#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}"#),
            Fault::TooDeep => json_answer("401 Unauthorized", r#"{"errors":[{"code":"UNAUTHORIZED","message":"access to the requested resource is not authorized","detail":{}}]}"#),
            Fault::ReferrersUnknown => json_answer("404 Not Found", r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
            Fault::NotAllowed => {
                "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            }
            Fault::PagedTags | Fault::TagsCutShort | Fault::TagsPageLong | Fault::TagsOfAnother => {
                let mut name = repository(&path).unwrap_or_default().to_string();
                let mut tags = vec!["1".to_string()];
                let mut link = String::new();
                match fault {
                    Fault::PagedTags => {
                        link = format!("Link: </v2/{name}/tags/list?n=1&last=1>; rel=\"next\"\r\n");
                    }
                    Fault::TagsCutShort => tags = vec!["other".to_string()],
                    Fault::TagsPageLong => tags.extend((2..=100).map(|i| format!("v{i}"))),
                    _ => name = "another/repository".to_string(),
                }
                let json = serde_json::json!({ "name": name, "tags": tags }).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\n{link}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                )
            }
        };
        let _ = client.write_all(answer.as_bytes());
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let hold = (state.lock().expect("proxy state").holds.iter())
        .find(|h| h.matches(&method, &path))
        .cloned();
    if let Some(hold) = hold {
        hold.pass(&path);
    }
    let path = match path.split_once("?mount=") {
        Some((start, _)) if method == "POST" && declines_mounts(state) => start.to_string(),
        _ => path,
    };
    forward(client, target, &method, &path, &headers, body, false);
}

/// The `Content-Length` among `headers`, 0 without one.
fn content_length(headers: &[&str]) -> u64 {
    headers
        .iter()
        .filter_map(|h| h.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends the request to the registry at `target` and its answer back, the
/// answer's body cut off halfway when `cut`.
fn forward(
    mut client: TcpStream,
    target: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    mut body: Vec<u8>,
    cut: bool,
) {
    let Ok(mut upstream) = TcpStream::connect(target) else {
        return;
    };
    let mut forwarded = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers.iter().filter(|h| {
        let name = h.split(':').next().unwrap_or_default().trim();
        !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive")
    }) {
        forwarded.push_str(h);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut first = forwarded.into_bytes();
    first.append(&mut body);
    if upstream.write_all(&first).is_err() {
        return;
    }
    let (Ok(mut from_client), Ok(mut to_upstream)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_upstream);
    });
    // Every way out ends with both sockets shut, below: a client left waiting
    // on a half-answered request would wait for its timeout.
    'cut: {
        if !cut {
            let _ = std::io::copy(&mut upstream, &mut client);
            break 'cut;
        }
        let Some((head, start)) = crate::http::read_head(&mut upstream) else {
            break 'cut;
        };
        let lines: Vec<&str> = std::str::from_utf8(&head)
            .unwrap_or_default()
            .split("\r\n")
            .collect();
        let half = content_length(&lines) / 2;
        let mut sent = (start.len() as u64).min(half);
        if client.write_all(&head).is_err() || client.write_all(&start[..sent as usize]).is_err() {
            break 'cut;
        }
        let mut chunk = [0u8; 16 << 10];
        while sent < half {
            let want = chunk.len().min((half - sent) as usize);
            match upstream.read(&mut chunk[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) if client.write_all(&chunk[..n]).is_ok() => sent += n as u64,
                Ok(_) => break,
            }
        }
    }
    // The registry closed after its answer: end the client side too, which also
    // ends the copy of the request above.
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}
