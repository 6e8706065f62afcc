//! How requests reach a provider. `https://` upstreams (the paid APIs) go through reqwest: TLS
//! with the platform's roots, HTTP/2 where the server offers it. Plain `http://` upstreams
//! (self-hosted servers, sidecars, a local vLLM) go through a bare hyper connection pool:
//! reqwest's per-request layers (redirect policy, proxy matching, re-parsing every response's URL
//! through IDNA) took about 8 % of a core at 16k proxied requests/s and buy nothing there.
//! Both keep connections alive, set `TCP_NODELAY` and never follow a redirect (it would carry the
//! provider key elsewhere).

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as PlainClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The HTTP client every remote provider shares (cheap to clone: both pools are shared).
#[derive(Clone, Debug)]
pub struct HttpClient {
    tls: reqwest::Client,
    plain: PlainClient<HttpConnector, Full<Bytes>>,
}

/// Where one request goes, parsed once: plain HTTP or TLS.
#[derive(Clone, Debug)]
pub enum Destination {
    /// `http://…`: the hyper pool.
    Plain(Uri),
    /// `https://…` (and anything else reqwest accepts): reqwest.
    Tls(reqwest::Url),
}

impl Destination {
    /// Parses `url`; `None` when it is not a URL.
    pub fn parse(url: &str) -> Option<Self> {
        if url.len() > 7 && url[..7].eq_ignore_ascii_case("http://") {
            let uri: Uri = url.parse().ok()?;
            return uri.host().is_some().then_some(Self::Plain(uri));
        }
        reqwest::Url::parse(url).ok().map(Self::Tls)
    }
}

tokio::task_local! {
    /// The gateway's id of the request being served (set around its handler), sent to providers
    /// as `X-Client-Request-Id` — `OpenAI`'s header for a caller's own id — so that a slow or
    /// failed call can be found in the provider's logs and support tickets.
    pub static CLIENT_REQUEST_ID: HeaderValue;
}

static CLIENT_REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-client-request-id");

/// A request that got no answer: refused, reset, TLS failure, or reqwest's own timeout.
#[derive(Debug)]
pub struct SendError {
    /// The client's timeout fired.
    pub timed_out: bool,
    /// No connection was made (refused, unreachable, [`CONNECT_TIMEOUT`] passed): the request
    /// never reached the server, so another attempt (another endpoint) is safe.
    pub connect: bool,
    /// The error with its causes (`…: invalid peer certificate: UnknownIssuer`), without the
    /// request's URL: it reaches clients, and a provider's URL is the operator's business (some
    /// carry a key in their query).
    pub message: String,
}

impl SendError {
    fn of_reqwest(err: reqwest::Error) -> Self {
        let (timed_out, connect) = (err.is_timeout(), err.is_connect());
        Self { connect, ..Self::of(&err.without_url(), timed_out) }
    }

    fn of_hyper(err: &hyper_util::client::legacy::Error) -> Self {
        Self { connect: err.is_connect(), ..Self::of(err, false) }
    }

    fn of(err: &(dyn std::error::Error + 'static), timed_out: bool) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { timed_out, connect: false, message }
    }
}

/// An answer whose head has arrived; its body is read with [`Self::bytes`] or
/// [`Self::bytes_stream`].
#[derive(Debug)]
pub enum UpstreamResponse {
    /// From the hyper pool.
    Plain(http::Response<hyper::body::Incoming>),
    /// From reqwest.
    Tls(reqwest::Response),
}

impl UpstreamResponse {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Plain(r) => r.status(),
            Self::Tls(r) => r.status(),
        }
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        match self {
            Self::Plain(r) => r.headers(),
            Self::Tls(r) => r.headers(),
        }
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, String> {
        match self {
            Self::Plain(r) => r.into_body().collect().await.map(http_body_util::Collected::to_bytes).map_err(|e| SendError::of(&e, false).message),
            Self::Tls(r) => r.bytes().await.map_err(|e| SendError::of_reqwest(e).message),
        }
    }

    /// The body as it arrives.
    pub fn bytes_stream(self) -> BoxStream<'static, Result<Bytes, String>> {
        match self {
            Self::Plain(r) => r.into_body().into_data_stream().map(|piece| piece.map_err(|e| SendError::of(&e, false).message)).boxed(),
            Self::Tls(r) => r.bytes_stream().map(|piece| piece.map_err(|e| SendError::of_reqwest(e).message)).boxed(),
        }
    }
}

/// How long a new connection may take. A host that drops packets (a replica gone from behind its
/// address) would otherwise hold each request for the provider's whole `timeout_ms` and then
/// fail it as a timeout, where a connect error is retried (on another endpoint of a pool).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl HttpClient {
    /// Pools that keep idle connections for `idle`.
    pub fn new(idle: Duration) -> Result<Self, reqwest::Error> {
        Self::with_connect_timeout(idle, CONNECT_TIMEOUT)
    }

    /// [`Self::new`] with another connect timeout.
    pub fn with_connect_timeout(idle: Duration, connect_timeout: Duration) -> Result<Self, reqwest::Error> {
        let tls = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(idle)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let plain = PlainClient::builder(TokioExecutor::new()).pool_idle_timeout(idle).pool_timer(TokioTimer::new()).build(connector);
        Ok(Self { tls, plain })
    }

    /// POSTs `body` with `headers` to `to`; the answer once its head has arrived.
    pub async fn post(&self, to: &Destination, headers: &[(HeaderName, HeaderValue)], body: Bytes) -> Result<UpstreamResponse, SendError> {
        let request_id = CLIENT_REQUEST_ID.try_with(Clone::clone).ok().map(|id| (CLIENT_REQUEST_ID_HEADER.clone(), id));
        let headers = headers.iter().chain(request_id.as_ref());
        match to {
            Destination::Plain(uri) => {
                let mut request = Request::new(Full::new(body));
                *request.method_mut() = Method::POST;
                uri.clone_into(request.uri_mut());
                let map = request.headers_mut();
                for (name, value) in headers {
                    map.append(name.clone(), value.clone());
                }
                self.plain.request(request).await.map(UpstreamResponse::Plain).map_err(|e| SendError::of_hyper(&e))
            }
            Destination::Tls(url) => {
                let mut builder = self.tls.post(url.clone()).body(body);
                for (name, value) in headers {
                    builder = builder.header(name.clone(), value.clone());
                }
                builder.send().await.map(UpstreamResponse::Tls).map_err(SendError::of_reqwest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_take_the_plain_pool_and_others_reqwest() {
        assert!(matches!(Destination::parse("http://127.0.0.1:8000/v1/chat/completions"), Some(Destination::Plain(_))));
        assert!(matches!(Destination::parse("HTTP://vllm.internal/v1/chat/completions"), Some(Destination::Plain(_))));
        assert!(matches!(Destination::parse("https://api.openai.com/v1/chat/completions"), Some(Destination::Tls(_))));
        assert!(Destination::parse("http://").is_none());
        assert!(Destination::parse("not a url").is_none());
    }

    /// What a server listening on a local port first receives from a `scheme://` URL.
    async fn first_bytes_sent_to(scheme: &str) -> Vec<u8> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            let mut seen = vec![0u8; 5];
            socket.read_exact(&mut seen).expect("read");
            // Any answer ends the exchange; what matters is what arrived.
            let _ = socket.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n");
            seen
        });
        let client = HttpClient::new(Duration::from_secs(1)).expect("client");
        let to = Destination::parse(&format!("{scheme}://127.0.0.1:{port}/v1/chat/completions")).expect("url");
        let headers = [(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        let _ = client.post(&to, &headers, Bytes::from_static(b"{}")).await;
        server.join().expect("server")
    }

    #[tokio::test]
    async fn https_is_spoken_over_tls_and_http_in_the_clear() {
        assert_eq!(first_bytes_sent_to("http").await, b"POST ".to_vec());
        // 0x16: a TLS handshake record (the ClientHello).
        assert_eq!(first_bytes_sent_to("https").await[0], 0x16);
    }
}
