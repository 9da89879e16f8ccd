//! The webhook's baseline: HTTPS on the operator's runtime shape (multi-threaded) and crypto
//! provider, reading each request body whole and answering every `POST` with one fixed
//! AdmissionReview response, the size of credvend's. No decoding, no decision: the cost of TLS,
//! HTTP and the bytes alone.

use std::sync::Arc;

use bytes::Bytes;
use credvend_bench_baseline::{Error, Flags, bind};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Error> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let flags = Flags::parse()?;
    let cert = flags.cert.ok_or("--cert is required")?;
    let key = flags.key.ok_or("--key is required")?;
    let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&key)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let body = Bytes::from(flags.body);
    let listener = bind(flags.listen)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (acceptor, body) = (acceptor.clone(), body.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    // Read the review whole, as the webhook must before it can decode it.
                    let _review = req.into_body().collect().await?.to_bytes();
                    let mut resp = Response::new(Full::new(body));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, hyper::Error>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}
