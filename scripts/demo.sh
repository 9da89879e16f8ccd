#!/usr/bin/env bash
# The credvend demo: STS (moto) on loopback, the credential agent with a service-account-like
# token, and boto3 getting credentials from the agent exactly as an app in a pod would.
# Everything runs on 127.0.0.1 and is cleaned up on exit; a failing step fails the demo.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for DESCRIPTION COMMAND...: polls for up to 60 s
  local what="$1"; shift
  for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; return 1
}

step "Preparing the Python environment (moto as STS, boto3 as the app's SDK)"
PY="${CREDVEND_PYTHON:-$(scripts/venv.sh)}"

step "Building credvend"
cargo build --quiet --locked --bin credvend
bin="${CARGO_TARGET_DIR:-target}/debug/credvend"

step "Starting STS (moto) on 127.0.0.1"
"$PY" tests/python/sts_peer.py >"$work/sts.out" 2>"$work/sts.log" &
pids+=($!)
wait_for "STS" test -s "$work/sts.out"
sts="$(awk '{print $2}' "$work/sts.out")"
echo "STS endpoint: $sts"

step "Writing a projected service-account token (a JWT, as the kubelet would)"
mkdir -p "$work/token" "$work/auth" "$work/cache"
"$PY" - "$work/token/token" <<'PYEOF'
import base64, json, sys, time
b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
claims = {"aud": ["sts.amazonaws.com"], "exp": int(time.time()) + 3600,
          "iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:team-a:app"}
open(sys.argv[1], "w").write(f'{b64({"alg": "RS256"})}.{b64(claims)}.c2lnbmF0dXJl')
PYEOF

port="$(free_port)"; mport="$(free_port)"
step "Starting the agent: credentials on 127.0.0.1:$port, metrics on 127.0.0.1:$mport"
POD_NAMESPACE=team-a POD_NAME=web-0 "$bin" agent \
  --role-arn arn:aws:iam::111122223333:role/s3-reader \
  --token-file "$work/token/token" \
  --auth-token-file "$work/auth/token" \
  --cache-file "$work/cache/credentials.json" \
  --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$mport" \
  --sts-endpoint "$sts" --region us-east-1 2>"$work/agent.log" &
pids+=($!)
wait_for "agent readiness" "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$mport/healthz/ready')"
sed 's/^/  agent: /' "$work/agent.log"

step "An app with nothing but the two standard variables asks boto3 who it is"
echo "  AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:$port/v1/credentials"
echo "  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=$work/auth/token"
env -i PATH="$PATH" \
  AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:$port/v1/credentials" \
  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="$work/auth/token" \
  AWS_ENDPOINT_URL_STS="$sts" AWS_DEFAULT_REGION=us-east-1 \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
  "$PY" -c 'import boto3; print("  GetCallerIdentity ARN:", boto3.client("sts").get_caller_identity()["Arn"])'

step "The agent's metrics"
"$PY" -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$mport/metrics').read().decode())" \
  | grep -E '^credvend_(credentials_expiration|credentials_refresh_total|endpoint_requests_total|last_refresh)' | sed 's/^/  /'

step "Demo finished: boto3 got short-lived credentials from the agent"
