"""The STS peer for credvend's tests: moto's real STS server, plus a recorder and switches.

moto accepts any web identity token, duration and role, so the tests also need to see what the
agent *sent*. This wraps moto's WSGI app:

- every STS request is recorded (method, path, form fields, a few headers) and listed as JSON at
  GET /__credvend/requests;
- a signed request's SigV4 signature is verified with the secret of the credentials this peer
  issued for its access key id ("sigv4": {"access_key_id", "valid"}; null when unsigned), and
  each answer's AccessKeyId is recorded ("issued_access_key_id"), so a test can check that a
  chained AssumeRole was signed with the previous hop's credentials (moto checks no signature);
- POST /__credvend/fail?code=Throttling&status=400 makes every STS call fail with that AWS error
  until POST /__credvend/recover;
- POST /__credvend/lifetime?seconds=N rewrites the Expiration of issued credentials to now+N
  (as STS does when a role's maximum session is shorter than asked), so refresh behaviour can be
  observed in seconds; seconds=0 turns it off, and a negative N issues credentials that have
  already expired (what a node whose clock is ahead sees);
- POST /__credvend/garble makes every STS call answer 200 with a body that is not an STS reply,
  until POST /__credvend/recover;
- POST /__credvend/delay?seconds=N holds every STS answer back for N seconds (0: no delay), and
  GET /__credvend/in_flight says how many requests are being held.

It listens on 127.0.0.1 and prints "listening http://127.0.0.1:PORT" once ready. With
--tls-host ADDR --tls-cert FILE --tls-key FILE it also serves the same app over https on
ADDR (a test bridge's address, where pods reach it: bindings allow plain http only to loopback)
and then prints a second line, "tls https://ADDR:PORT".
"""

import argparse
import datetime
import hashlib
import hmac
import io
import json
import re
import sys
import threading
import time
import urllib.parse

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

ERROR_XML = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>00000000-0000-0000-0000-000000000000</RequestId>
</ErrorResponse>"""

RECORDED_HEADERS = ("content-type", "user-agent", "authorization", "x-amz-date")
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/([^/]+)/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]+)"
)
CREDENTIALS = re.compile(rb"<Credentials>(.*?)</Credentials>", re.S)


def issued_credentials(body):
    """(access key id, secret) of the credentials in an STS answer, or None."""
    block = CREDENTIALS.search(body)
    key_id = block and re.search(rb"<AccessKeyId>([^<]+)</AccessKeyId>", block.group(1))
    secret = block and re.search(rb"<SecretAccessKey>([^<]+)</SecretAccessKey>", block.group(1))
    return (key_id.group(1).decode(), secret.group(1).decode()) if key_id and secret else None


def sigv4_valid(req, body, secret, date, region, service, signed_headers, signature):
    """Recomputes a SigV4 signature (AWS's documented algorithm) and compares."""
    def encode(s):
        return urllib.parse.quote(s, safe="-_.~")

    query = sorted(urllib.parse.parse_qsl(req.query_string.decode(), keep_blank_values=True))
    canonical_query = "&".join(f"{encode(k)}={encode(v)}" for k, v in query)
    names = signed_headers.split(";")
    canonical_headers = "".join(f"{n}:{' '.join(req.headers.get(n, '').strip().split())}\n" for n in names)
    payload = req.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical = "\n".join([req.method, req.path or "/", canonical_query, canonical_headers, signed_headers, payload])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", req.headers.get("x-amz-date", ""), scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature)


class Peer:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.requests = []
        self.failure = None  # (code, status)
        self.lifetime = 0
        self.garbled = False
        self.delay = 0.0
        self.in_flight = 0
        self.issued = {}  # access key id -> secret, of every set of credentials answered

    def __call__(self, environ, start_response):
        req = Request(environ)
        if req.path.startswith("/__credvend/"):
            return self.control(req)(environ, start_response)
        body = req.get_data(cache=True)
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        record = {
            "method": req.method,
            "path": req.path,
            "query": req.query_string.decode(),
            "form": form,
            "headers": {k.lower(): v for k, v in req.headers.items() if k.lower() in RECORDED_HEADERS},
            "time": time.time(),
            "sigv4": None,
            "issued_access_key_id": None,
        }
        signed = AUTHORIZATION.fullmatch(req.headers.get("authorization", ""))
        with self.lock:
            if signed:
                key_id, date, region, service, names, signature = signed.groups()
                secret = self.issued.get(key_id)
                record["sigv4"] = {
                    "access_key_id": key_id,
                    "valid": secret is not None
                    and sigv4_valid(req, body, secret, date, region, service, names, signature),
                }
            self.requests.append(record)
            failure = self.failure
            lifetime = self.lifetime
            garbled = self.garbled
            delay = self.delay
        if delay:
            with self.lock:
                self.in_flight += 1
            try:
                time.sleep(delay)
            finally:
                with self.lock:
                    self.in_flight -= 1
        if garbled:
            return Response("<html>not an STS reply", status=200, content_type="text/xml")(environ, start_response)
        if failure:
            code, status = failure
            xml = ERROR_XML.format(code=code, message=f"injected by the test: {code}")
            return Response(xml, status=status, content_type="text/xml")(environ, start_response)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.forward(environ, start_response, lifetime, record)

    def forward(self, environ, start_response, lifetime, record):
        """moto's answer, with the issued credentials noted and the expiry rewritten if asked."""
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        chunks = b"".join(self.app(environ, capture))
        issued = issued_credentials(chunks)
        if issued:
            key_id, secret = issued
            with self.lock:
                self.issued[key_id] = secret
                record["issued_access_key_id"] = key_id
        if lifetime:
            exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lifetime)
            stamp = exp.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
            chunks = re.sub(rb"<Expiration>[^<]*</Expiration>", b"<Expiration>" + stamp + b"</Expiration>", chunks)
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(chunks))))
        start_response(captured["status"], headers)
        return [chunks]

    def control(self, req):
        action = req.path.rsplit("/", 1)[-1]
        with self.lock:
            if action == "requests" and req.method == "GET":
                return Response(json.dumps(self.requests), content_type="application/json")
            if action == "fail" and req.method == "POST":
                self.failure = (req.args.get("code", "ServiceUnavailable"), int(req.args.get("status", "503")))
                return Response("ok")
            if action == "recover" and req.method == "POST":
                self.failure = None
                self.garbled = False
                return Response("ok")
            if action == "garble" and req.method == "POST":
                self.garbled = True
                return Response("ok")
            if action == "delay" and req.method == "POST":
                self.delay = float(req.args.get("seconds", "0"))
                return Response("ok")
            if action == "in_flight" and req.method == "GET":
                return Response(json.dumps(self.in_flight), content_type="application/json")
            if action == "lifetime" and req.method == "POST":
                self.lifetime = int(req.args.get("seconds", "0"))
                return Response("ok")
            if action == "reset" and req.method == "POST":
                self.requests.clear()
                return Response("ok")
        return Response("unknown control action", status=404)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-host")
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    app = Peer(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    print(f"listening http://127.0.0.1:{server.server_port}", flush=True)
    if args.tls_host:
        tls = make_server(
            args.tls_host, args.tls_port, app, threaded=True, ssl_context=(args.tls_cert, args.tls_key)
        )
        threading.Thread(target=tls.serve_forever, daemon=True).start()
        print(f"tls https://{args.tls_host}:{tls.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
