"""Records which functions of the release binary the agent runs, for layout/agent.order.

Usage: agent_layout.py BINARY OUT_FILE (run by scripts/agent-layout.sh, which says when).

The agent runs under valgrind's callgrind (which sees every function executed, not a sample)
through what a pod's agent does: start with the two kinds of binding the webhook writes (a
plain exchange and a chained AssumeRole), exchange over TLS against moto's STS (the peer of
the tests, serving a CA made here, trusted through SSL_CERT_FILE next to the system's bundle
as in the image), serve credentials to each path, refuse a wrong token and an unknown
binding, answer the kubelet's probes and a Prometheus scrape, then start a second time from
the cache file the first run left, and a third time configured by flags as a person runs it.
callgrind follows the agent into the child processes that run its STS calls
(`agent-exchange`). The functions of BINARY that ran, in the order callgrind first listed
them, are the ordering file (one mangled symbol per line). First come those the agent ran
while serving (after `callgrind_control` dumped its start-up, which ends when the agent gives
its start-up pages back), so that what a serving agent faults in again sits together; then
those of its start-up; then those only its exchange processes ran.
"""

import datetime
import glob
import ipaddress
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "..", "tests", "python", "sts_peer.py")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PORT, HEALTH = 19911, 19912
# What callgrind names a function it has a symbol for (not "0x…" or "(below main)").
SYMBOL = re.compile(r"^[A-Za-z_.$][\w.$@]*$")
# A token shaped like a projected service-account token (moto reads no signature).
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YTpiIn0.c2ln"


def tls_files(d):
    """A CA and a certificate for 127.0.0.1 signed by it; returns (bundle, cert, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "credvend layout CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
    bundle, cert, keyfile = (os.path.join(d, n) for n in ("bundle.pem", "cert.pem", "key.pem"))
    system = open(SYSTEM_BUNDLE, "rb").read() if os.path.exists(SYSTEM_BUNDLE) else b""
    open(bundle, "wb").write(system + pem(ca))
    open(cert, "wb").write(pem(leaf))
    open(keyfile, "wb").write(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return bundle, cert, keyfile


def plans(d, endpoint):
    base = (
        '"roleArn":"arn:aws:iam::123456789012:role/app","duration":"1h",'
        '"sessionName":"{namespace}.{pod}","tokenFile":"%s","audience":"sts.amazonaws.com",'
        '"region":"eu-west-1","stsEndpoint":"%s"' % (os.path.join(d, "token"), endpoint)
    )
    chain = (
        '"chain":[{"roleArn":"arn:aws:iam::444455556666:role/cross",'
        '"sessionName":"{namespace}.{pod}","externalId":"ext-id-1",'
        '"tags":[{"key":"team","value":"a"}],"transitiveTagKeys":["team"],'
        '"sourceIdentity":"team-a"}]'
    )
    return ['{"name":"app",%s}' % base, '{"name":"cross",%s,%s}' % (base, chain)]


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def binding_flags(d, endpoint, by_hand):
    """The webhook's --binding plans, or the flags a person gives for one binding."""
    if by_hand:
        return ["--role-arn", "arn:aws:iam::123456789012:role/app", "--token-file",
                os.path.join(d, "token"), "--sts-endpoint", endpoint, "--region", "eu-west-1"]
    return [arg for plan in plans(d, endpoint) for arg in ("--binding", plan)]


def run_agent(binary, d, endpoint, bundle, out, by_hand=False):
    args = ["valgrind", "--tool=callgrind", "--demangle=no", "--trace-children=yes"]
    args += [f"--callgrind-out-file={out}.%p"]
    args += [binary, "agent", "--listen", f"127.0.0.1:{PORT}"]
    args += ["--metrics-listen", f"127.0.0.1:{HEALTH}"]
    args += ["--auth-token-file", os.path.join(d, "auth", "token")]
    args += ["--cache-file", os.path.join(d, "cache", "credentials.json")]
    args += binding_flags(d, endpoint, by_hand)
    env = dict(os.environ, POD_NAMESPACE="team-a", POD_NAME="app-0", POD_SERVICE_ACCOUNT="app")
    env["SSL_CERT_FILE"] = bundle
    log = open(os.path.join(d, "agent.log"), "ab")
    agent = subprocess.Popen(args, env=env, stdout=log, stderr=log)
    auth = os.path.join(d, "auth", "token")
    base = f"http://127.0.0.1:{PORT}/v1/credentials"
    deadline = time.time() + 120
    last = base if by_hand else base + "/cross"
    while time.time() < deadline:
        if os.path.exists(auth) and get(last, open(auth).read().strip()) == 200:
            break
        if agent.poll() is not None:
            sys.exit(f"the agent exited early; see {d}/agent.log")
        time.sleep(0.3)
    else:
        sys.exit(f"the agent never served credentials; see {d}/agent.log")
    # All that ran so far is start-up, up to the pass that gives its pages back after the
    # first refresh; what runs from here on is what a serving agent keeps resident.
    time.sleep(1)
    subprocess.run(["callgrind_control", "--dump=start-up", str(agent.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    token = open(auth).read().strip()
    paths = ("", "") if by_hand else ("", "/app", "/cross", "", "/nope")
    statuses = [get(base + p, token) for p in paths]
    statuses += [get(base, "wrong"), get(base)]
    for path in ("/healthz/live", "/healthz/ready", "/metrics", "/healthz/ready", "/metrics"):
        statuses.append(get(f"http://127.0.0.1:{HEALTH}{path}"))
    served = [200, 200] if by_hand else [200, 200, 200, 200, 404]
    if statuses != served + [401, 401, 200, 200, 200, 200, 200]:
        sys.exit(f"unexpected statuses {statuses}; see {d}/agent.log")
    agent.send_signal(signal.SIGTERM)
    if agent.wait(timeout=120) != 0:
        sys.exit(f"the agent did not stop cleanly; see {d}/agent.log")
    # valgrind runs the agent in its own process, so the agent's pid names its output: its
    # start-up dump is numbered 1, and what ran after it is written unnumbered at exit.
    parent = f"{out}.{agent.pid}"
    start_up, serving = f"{parent}.1", parent
    for part in (start_up, serving):
        if not os.path.exists(part):
            sys.exit(f"callgrind wrote no {part}: {sorted(glob.glob(parent + '*'))}")
    children = sorted(set(glob.glob(f"{out}.*")) - set(glob.glob(f"{parent}*")))
    return serving, start_up, children


def functions(binary, outs, seen):
    """Mangled names of BINARY's functions in callgrind outputs, first seen first, leaving out
    (and adding to) those in `seen`."""
    name = os.path.basename(binary)
    order = []
    for out in outs:
        objects, names, current, called = {}, {}, None, None
        for line in open(out, errors="replace"):
            m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if m:
                kind, i, path = m.groups()
                if path:
                    objects[i] = path
                if kind == "ob":
                    current = objects.get(i)
                else:
                    called = objects.get(i)
                continue
            m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if not m:
                continue
            kind, i, fn = m.groups()
            if fn:
                names[i] = fn
            obj = current if kind == "fn" else (called or current)
            if kind == "fn":
                called = None
            fn = names.get(i)
            if fn and obj and os.path.basename(obj) == name and fn not in seen and SYMBOL.match(fn):
                seen.add(fn)
                order.append(fn)
    return order


def main():
    binary, order_file = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        for sub in ("auth", "cache"):
            os.makedirs(os.path.join(d, sub))
        open(os.path.join(d, "token"), "w").write(TOKEN)
        bundle, cert, key = tls_files(d)
        peer = subprocess.Popen(
            [sys.executable, PEER, "--tls-host", "127.0.0.1", "--tls-cert", cert, "--tls-key", key],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            lines = [peer.stdout.readline().strip() for _ in range(2)]
            endpoint = next(l.split()[1] for l in lines if l.startswith("tls "))
            runs = [os.path.join(d, f"callgrind.{n}") for n in ("first", "restart", "flags")]
            serving, start_up, exchanges = [], [], []
            for i, out in enumerate(runs):
                if i == 2:
                    log = open(os.path.join(d, "agent.log")).read()
                    if "serving the credentials a previous run" not in log:
                        sys.exit("the second start did not restore the cache file")
                served, started, children = run_agent(binary, d, endpoint, bundle, out, by_hand=i == 2)
                serving.append(served)
                start_up.append(started)
                exchanges += children
            if not exchanges:
                sys.exit("callgrind saw no exchange process")
            seen = set()
            parts = [functions(binary, outs, seen) for outs in (serving, start_up, exchanges)]
            order = [fn for part in parts for fn in part]
            print(f"{len(parts[0])} functions serving, {len(parts[1])} more at start-up, "
                  f"{len(parts[2])} more in the exchange processes", file=sys.stderr)
        finally:
            peer.kill()
    with open(order_file, "w") as f:
        f.write("".join(n + "\n" for n in order))
    print(f"{len(order)} functions written to {order_file}", file=sys.stderr)


if __name__ == "__main__":
    main()
