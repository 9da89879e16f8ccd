//! The endpoint's baseline: `GET /v1/credentials` with the same `Authorization` check and the
//! same bytes as the agent, on the agent's runtime shape (one current thread), and nothing else.

use std::sync::Arc;

use bytes::Bytes;
use credvend_bench_baseline::{Error, Flags, bind, same};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let flags = Flags::parse()?;
    let token: Arc<[u8]> = flags.token.ok_or("--token is required")?.into();
    let body = Bytes::from(flags.body);
    let listener = bind(flags.listen)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (token, body) = (token.clone(), body.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer(&req, &token, &body);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(
    req: &Request<hyper::body::Incoming>,
    token: &[u8],
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| same(v.as_bytes(), token));
    let status = if req.uri().path() != "/v1/credentials" {
        StatusCode::NOT_FOUND
    } else if req.method() != Method::GET {
        StatusCode::METHOD_NOT_ALLOWED
    } else if !authorized {
        StatusCode::UNAUTHORIZED
    } else {
        let mut resp = Response::new(Full::new(body.clone()));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return resp;
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}
