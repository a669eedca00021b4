//! The HTTP layer under every request of the Kubernetes datastore: the client-side rate limit
//! (the netconf's `qps` and `burst`, as Calico v3.32 applies them to its client-go client) and
//! bounded retries of the answers that say "come back later".
//!
//! Retried, after the server's `Retry-After` (seconds) or else a short growing backoff:
//! - **429 Too Many Requests**, any verb: API Priority and Fairness, max-in-flight, or a CRD's
//!   storage "(re)initializing" right after the CRDs were (re)installed. The server did not
//!   act on the request, so sending it again is always safe.
//! - **503 Service Unavailable** with `Retry-After` (the server asks to come back), any verb;
//!   without it only reads (GET), since a write may have reached storage.
//!
//! Nothing else is retried here: a 409 goes back to the allocator, whose compare-and-swap loop
//! is the only conflict retry loop, and every other error is reported at once. Retries are
//! bounded twice: at most [`MAX_RETRIES`] per request, and no wait may end after the request's
//! retry deadline (`ClientOptions::retry_budget` after it was first sent, and never after
//! `ClientOptions::deadline`, the verb's own). A wait that would is not started: the last
//! answer (429/503) is returned, and reported as the server being unavailable (code 11).

use std::sync::{Arc, Mutex as SyncMutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// At most this many retries of one request (client-go's default).
pub const MAX_RETRIES: u32 = 10;
/// How long one request may spend waiting to be retried unless a deadline comes first.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(20);
/// Calico's client QPS when the netconf does not set one (client-go's default).
pub const DEFAULT_QPS: f64 = 5.0;
/// Calico's client burst when the netconf does not set one (libcalico-go sets 100).
pub const DEFAULT_BURST: u32 = 100;
/// The first backoff when the server gives no `Retry-After`; doubled per retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest backoff when the server gives no `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// How requests are paced and retried.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Requests per second once the burst is spent; `None`: no limit (Calico: a negative
    /// `qps`).
    pub qps: Option<f64>,
    /// Requests that may go at once before `qps` paces them (at least 1).
    pub burst: u32,
    /// How long one request may wait for retries in total.
    pub retry_budget: Duration,
    /// No retry wait ends after this (the verb's deadline).
    pub deadline: Option<Instant>,
    /// The API group of Calico's objects when it was given (`calico_api_group`,
    /// CALICO_API_GROUP, `--calico-api-group`); `None`: asked of the server on first use.
    pub api_group: Option<crate::datastore::api_group::ApiGroup>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            qps: Some(DEFAULT_QPS),
            burst: DEFAULT_BURST,
            retry_budget: DEFAULT_RETRY_BUDGET,
            deadline: None,
            api_group: None,
        }
    }
}

/// kube's client for `cfg` with the pacing and retry layer of `opts` on top of its stack;
/// kube's own retry layer is turned off: this one is the only one.
pub fn client(cfg: Config, opts: &ClientOptions) -> Result<Client, kube::Error> {
    client_with_deadline(cfg, opts, &Deadline::new(opts.deadline))
}

/// [`client`], whose retry waits end by `deadline` (which the caller may move later).
pub fn client_with_deadline(
    mut cfg: Config,
    opts: &ClientOptions,
    deadline: &Deadline,
) -> Result<Client, kube::Error> {
    cfg.default_retry = false;
    Ok(ClientBuilder::try_from(cfg)?
        .with_layer(&ThrottleLayer::new(*opts, deadline.clone()))
        .build())
}

/// The verb's deadline for retry waits, shared by every request of one client. calico-ipam
/// moves it when the verb's own clock starts: it reads ahead before waiting for the host-wide
/// lock, and the verb's time counts from when it holds the lock.
#[derive(Debug, Clone, Default)]
pub struct Deadline(Arc<SyncMutex<Option<Instant>>>);

impl Deadline {
    pub fn new(at: Option<Instant>) -> Deadline {
        Deadline(Arc::new(SyncMutex::new(at)))
    }

    /// No retry wait of this client ends after `at` from now on.
    pub fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A token bucket: `burst` tokens, refilled at `qps` a second. A request that finds none
/// reserves the next one and waits until it is due (as client-go's limiter does).
#[derive(Debug)]
struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(qps: f64, burst: u32) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            qps,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token; returns how long to wait before using it.
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

/// The tower layer that adds pacing and retries to kube's HTTP stack.
#[derive(Debug, Clone)]
pub struct ThrottleLayer {
    opts: ClientOptions,
    deadline: Deadline,
    bucket: Option<Arc<SyncMutex<Bucket>>>,
}

impl ThrottleLayer {
    /// `opts`' pacing and retries; retry waits end by `deadline` (`opts.deadline` is not read).
    pub fn new(opts: ClientOptions, deadline: Deadline) -> ThrottleLayer {
        let bucket = opts
            .qps
            .filter(|q| *q > 0.0 && q.is_finite())
            .map(|q| Arc::new(SyncMutex::new(Bucket::new(q, opts.burst))));
        ThrottleLayer {
            opts,
            deadline,
            bucket,
        }
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Throttle<S> {
        Throttle {
            inner: Arc::new(Mutex::new(inner)),
            opts: self.opts,
            deadline: self.deadline.clone(),
            bucket: self.bucket.clone(),
        }
    }
}

/// See [`ThrottleLayer`].
pub struct Throttle<S> {
    inner: Arc<Mutex<S>>,
    opts: ClientOptions,
    deadline: Deadline,
    bucket: Option<Arc<SyncMutex<Bucket>>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> Service<Request<Body>> for Throttle<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per request, under its lock.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let bucket = self.bucket.clone();
        let opts = self.opts;
        let deadline = self.deadline.get();
        Box::pin(async move {
            let start = Instant::now();
            let mut until = start + opts.retry_budget;
            if let Some(d) = deadline {
                until = until.min(d);
            }
            let mut req = req;
            let mut retries = 0u32;
            loop {
                // A copy for a retry; a streamed body (never sent by this datastore) is sent
                // once.
                let again = clone_request(&req);
                pace(bucket.as_deref()).await;
                let resp = {
                    let mut svc = inner.lock().await;
                    let ready = svc.ready().await.map_err(Into::into)?;
                    ready.call(req)
                }
                .await
                .map_err(Into::into)?;
                let Some(next) = again else {
                    return Ok(resp);
                };
                let Some(wait) = retry_wait(next.method(), &resp, retries) else {
                    return Ok(resp);
                };
                if retries >= MAX_RETRIES || Instant::now() + wait > until {
                    return Ok(resp);
                }
                tracing::info!(
                    "API server answered {} to {} {}; retrying in {wait:?}",
                    resp.status(),
                    next.method(),
                    next.uri().path()
                );
                tokio::time::sleep(wait).await;
                retries += 1;
                req = next;
            }
        })
    }
}

/// Waits for a token of the rate limit.
async fn pace(bucket: Option<&SyncMutex<Bucket>>) {
    let Some(bucket) = bucket else { return };
    let wait = bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

fn clone_request(req: &Request<Body>) -> Option<Request<Body>> {
    let body = req.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// Whether an answer is retried, and after how long: see the module documentation.
fn retry_wait<B>(method: &Method, resp: &Response<B>, retries: u32) -> Option<Duration> {
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let retryable = match resp.status() {
        StatusCode::TOO_MANY_REQUESTS => true,
        StatusCode::SERVICE_UNAVAILABLE => retry_after.is_some() || method == Method::GET,
        _ => false,
    };
    if !retryable {
        return None;
    }
    Some(retry_after.unwrap_or_else(|| {
        FIRST_BACKOFF
            .saturating_mul(1u32 << retries.min(8))
            .min(MAX_BACKOFF)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::kube::{Connection, KubeStore};
    use crate::datastore::{Datastore, DatastoreError};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A tiny HTTP/1.1 server on loopback that answers requests, in order, with `answers`
    /// (then 500), and records each request's method and path.
    struct Canned {
        url: String,
        seen: Arc<SyncMutex<Vec<String>>>,
    }

    impl Canned {
        fn start(answers: Vec<String>) -> Canned {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let seen = Arc::new(SyncMutex::new(Vec::new()));
            let answers = Arc::new(SyncMutex::new(answers.into_iter()));
            let log = seen.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let (log, answers) = (log.clone(), answers.clone());
                    std::thread::spawn(move || serve(conn, &log, &answers));
                }
            });
            Canned { url, seen }
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().expect("lock").clone()
        }
    }

    fn serve(
        conn: std::net::TcpStream,
        log: &SyncMutex<Vec<String>>,
        answers: &SyncMutex<std::vec::IntoIter<String>>,
    ) {
        let mut out = conn.try_clone().expect("clone");
        let mut rd = BufReader::new(conn);
        loop {
            let mut line = String::new();
            if rd.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if rd.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if rd.read_exact(&mut body).is_err() {
                return;
            }
            let request: Vec<&str> = line.split_whitespace().take(2).collect();
            let path = request
                .get(1)
                .and_then(|p| p.split('?').next())
                .unwrap_or("");
            let method = request.first().copied().unwrap_or("");
            log.lock().expect("lock").push(format!("{method} {path}"));
            let answer = answers
                .lock()
                .expect("lock")
                .next()
                .unwrap_or_else(|| http_answer(500, &[], r#"{"kind":"Status","code":500}"#));
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn http_answer(code: u16, headers: &[(&str, &str)], body: &str) -> String {
        let mut s = format!(
            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.push_str(body);
        s
    }

    fn status(code: u16, reason: &str, retry_after: Option<u64>) -> String {
        let details = retry_after
            .map(|s| format!(r#","details":{{"retryAfterSeconds":{s}}}"#))
            .unwrap_or_default();
        let body = format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"storage is (re)initializing","reason":"{reason}","code":{code}{details}}}"#
        );
        let seconds = retry_after.map(|s| s.to_string());
        let headers: Vec<(&str, &str)> = seconds
            .as_deref()
            .map(|s| vec![("Retry-After", s)])
            .unwrap_or_default();
        http_answer(code, &headers, &body)
    }

    const CONFIG_URI: &str = "/apis/crd.projectcalico.org/v1/ipamconfigs/default";

    fn ipam_config() -> String {
        http_answer(
            200,
            &[],
            r#"{"apiVersion":"crd.projectcalico.org/v1","kind":"IPAMConfig","metadata":{"name":"default","resourceVersion":"7"},"spec":{"strictAffinity":true,"autoAllocateBlocks":true}}"#,
        )
    }

    /// Runs `f` with a store whose client talks to `server` with `opts`.
    fn with_store<T>(
        server: &Canned,
        opts: ClientOptions,
        f: impl AsyncFnOnce(KubeStore) -> T,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let cfg = Config::new(server.url.parse().expect("url"));
            let conn = Connection {
                client: client(cfg, &opts).expect("client"),
                server: server.url.clone(),
                group: crate::datastore::kube::GroupCell::new(Some(
                    crate::datastore::api_group::ApiGroup::V1,
                )),
                deadline: Deadline::default(),
            };
            f(KubeStore::new(conn)).await
        })
    }

    #[test]
    fn a_429_is_sent_again_after_retry_after_and_then_succeeds() {
        let server = Canned::start(vec![status(429, "TooManyRequests", Some(1)), ipam_config()]);
        let t0 = std::time::Instant::now();
        let config = with_store(&server, ClientOptions::default(), async |s| {
            s.get_config().await
        })
        .expect("the retry succeeds");
        assert!(config.strict_affinity, "the second answer was read");
        assert!(
            t0.elapsed() >= Duration::from_secs(1),
            "Retry-After was honoured: {:?}",
            t0.elapsed()
        );
        let get = format!("GET {CONFIG_URI}");
        assert_eq!(server.seen(), vec![get.clone(), get]);
    }

    #[test]
    fn a_wait_past_the_deadline_is_not_started() {
        let server = Canned::start(vec![
            status(429, "TooManyRequests", Some(30)),
            ipam_config(),
        ]);
        let opts = ClientOptions {
            deadline: Some(Instant::now() + Duration::from_secs(5)),
            ..ClientOptions::default()
        };
        let t0 = std::time::Instant::now();
        let err = with_store(&server, opts, async |s| s.get_config().await)
            .expect_err("Retry-After is past the deadline");
        assert!(
            matches!(&err, DatastoreError::Unavailable(m) if m.contains("429")),
            "{err:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(server.seen().len(), 1);
    }

    #[test]
    fn retries_stop_at_the_bound_and_a_write_answered_503_is_not_repeated() {
        let many = (0..=MAX_RETRIES + 1)
            .map(|_| status(429, "TooManyRequests", Some(0)))
            .collect();
        let server = Canned::start(many);
        let err = with_store(&server, ClientOptions::default(), async |s| {
            s.get_config().await
        })
        .expect_err("still 429 after every retry");
        assert!(matches!(err, DatastoreError::Unavailable(_)), "{err:?}");
        assert_eq!(server.seen().len() as u32, 1 + MAX_RETRIES);

        let server = Canned::start(vec![status(503, "ServiceUnavailable", None), ipam_config()]);
        with_store(&server, ClientOptions::default(), async |s| {
            s.get_config().await
        })
        .expect("a read answered 503 is sent again");
        assert_eq!(server.seen().len(), 2);

        let server = Canned::start(vec![ipam_config(), status(503, "ServiceUnavailable", None)]);
        let err = with_store(&server, ClientOptions::default(), async |s| {
            s.apply_config(&crate::model::IpamConfig::default()).await
        })
        .expect_err("503");
        assert!(matches!(err, DatastoreError::Unavailable(_)), "{err:?}");
        assert_eq!(
            server.seen(),
            vec![format!("GET {CONFIG_URI}"), format!("PUT {CONFIG_URI}")],
            "a write answered 503 without Retry-After may have happened: not sent again"
        );
    }

    /// The group is found by the v1 IPAMConfig read (its object, or a 404 naming it, proves
    /// v1 is served: Calico's rule chooses v1 whenever it is), else by one `GET /apis`, and
    /// then kept; a server that will not say (401/403/404) means v1, as in Calico; a failing
    /// one is reported.
    #[test]
    fn the_api_group_is_discovered_once_with_calicos_rule() {
        let groups = |names: &[&str]| {
            let list: Vec<String> = names
                .iter()
                .map(|n| format!(r#"{{"name":"{n}","versions":[]}}"#))
                .collect();
            http_answer(
                200,
                &[],
                &format!(
                    r#"{{"kind":"APIGroupList","apiVersion":"v1","groups":[{}]}}"#,
                    list.join(",")
                ),
            )
        };
        // What the API server answers for a kind it does not serve: plain text, no Status.
        let no_such_path = || {
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n\r\n404 page not found"
                .to_owned()
                + "\n"
        };
        // What it answers for a served kind without the object: a Status naming it.
        let no_such_object = || {
            http_answer(
                404,
                &[],
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"ipamconfigs.crd.projectcalico.org \"default\" not found","reason":"NotFound","details":{"name":"default","group":"crd.projectcalico.org","kind":"ipamconfigs"},"code":404}"#,
            )
        };
        let discover = |answers: Vec<String>| {
            let server = Canned::start(answers);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let got = rt.block_on(async {
                let cfg = Config::new(server.url.parse().expect("url"));
                let conn = Connection {
                    client: client(cfg, &ClientOptions::default()).expect("client"),
                    server: server.url.clone(),
                    group: crate::datastore::kube::GroupCell::new(None),
                    deadline: Deadline::default(),
                };
                let first = conn.api_group().await;
                if first.is_ok() {
                    // Kept: a clone of the connection asks nothing.
                    assert_eq!(conn.clone().api_group().await, first);
                }
                first
            });
            (got, server.seen())
        };
        use crate::datastore::api_group::ApiGroup;
        let probe = format!("GET {CONFIG_URI}");

        let (g, seen) = discover(vec![ipam_config()]);
        assert_eq!(g, Ok(ApiGroup::V1), "v1 serves its IPAMConfig");
        assert_eq!(seen, vec![probe.clone()], "one request, no discovery");
        let (g, seen) = discover(vec![no_such_object()]);
        assert_eq!(g, Ok(ApiGroup::V1), "v1 served, no IPAMConfig object");
        assert_eq!(seen, vec![probe.clone()]);

        let (g, seen) = discover(vec![no_such_path(), groups(&["apps", "projectcalico.org"])]);
        assert_eq!(g, Ok(ApiGroup::V3));
        assert_eq!(seen, vec![probe.clone(), "GET /apis".to_owned()]);
        let (g, _) = discover(vec![
            no_such_path(),
            groups(&["projectcalico.org", "crd.projectcalico.org"]),
        ]);
        assert_eq!(
            g,
            Ok(ApiGroup::V1),
            "aggregated API server over the v1 CRDs"
        );
        let (g, seen) = discover(vec![
            status(403, "Forbidden", None),
            status(403, "Forbidden", None),
        ]);
        assert_eq!(g, Ok(ApiGroup::V1));
        assert_eq!(seen, vec![probe.clone(), "GET /apis".to_owned()]);

        let (g, seen) = discover(vec![status(500, "InternalError", None)]);
        assert!(
            matches!(&g, Err(DatastoreError::Unavailable(m)) if m.contains("500")),
            "{g:?}"
        );
        assert_eq!(
            seen,
            vec![probe.clone()],
            "a failing probe is not retried here"
        );
        let (g, seen) = discover(vec![no_such_path(), status(500, "InternalError", None)]);
        assert!(
            matches!(&g, Err(DatastoreError::Unavailable(m)) if m.contains("500")),
            "{g:?}"
        );
        assert_eq!(seen, vec![probe, "GET /apis".to_owned()]);
    }

    fn answer(status: u16, retry_after: Option<&str>) -> Response<()> {
        let mut r = Response::builder().status(status);
        if let Some(v) = retry_after {
            r = r.header("Retry-After", v);
        }
        r.body(()).expect("response")
    }

    #[test]
    fn which_answers_are_retried() {
        let get = Method::GET;
        let put = Method::PUT;
        assert_eq!(
            retry_wait(&put, &answer(429, Some("3")), 0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_wait(&put, &answer(429, None), 0), Some(FIRST_BACKOFF));
        assert_eq!(
            retry_wait(&get, &answer(429, None), 9),
            Some(MAX_BACKOFF),
            "the backoff is capped"
        );
        assert_eq!(
            retry_wait(&put, &answer(503, Some("1")), 0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_wait(&put, &answer(503, None), 0),
            None,
            "a write answered 503 without Retry-After may have happened"
        );
        assert_eq!(
            retry_wait(&get, &answer(503, None), 1),
            Some(FIRST_BACKOFF * 2)
        );
        for status in [200, 404, 409, 500, 504] {
            assert_eq!(retry_wait(&get, &answer(status, Some("1")), 0), None);
        }
    }
}
