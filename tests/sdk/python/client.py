"""The Python conformance client: boto3/botocore's default credential chain against the agent.

Resolves credentials exactly as an application in a pod would (no explicit credentials, no
explicit endpoint: the chain finds the container endpoint from AWS_CONTAINER_CREDENTIALS_*
and STS from AWS_ENDPOINT_URL_STS), calls STS GetCallerIdentity CREDVEND_SDK_CALLS times and
prints one JSON line for the Rust driver (tests/sdk_conformance.rs). Runs with the venv from
scripts/venv.sh.
"""

import json
import os
import re
import sys
import time

CREDENTIAL_SCOPE = re.compile(r"Credential=([^/,\s]+)/")


def env_int(name, fallback):
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return fallback


def describe(err):
    return f"{type(err).__name__}: {err}"


def run(out):
    import boto3
    import botocore

    out["version"] = botocore.__version__
    calls = out["calls"]
    pause = env_int("CREDVEND_SDK_SLEEP_MS", 0) / 1000
    session = boto3.session.Session()
    client = session.client("sts")
    signed_with = {"key": ""}

    # Read the key from the signed request: asking the credentials object instead would itself
    # refresh whenever botocore is inside its refresh window, and distort the fetch counts.
    def record_signing_key(request, **_):
        auth = request.headers.get("Authorization", b"")
        if isinstance(auth, bytes):
            auth = auth.decode()
        match = CREDENTIAL_SCOPE.search(auth)
        if match:
            signed_with["key"] = match.group(1)

    client.meta.events.register("before-send.sts.*", record_signing_key)
    for i in range(calls):
        if i > 0 and pause > 0:
            time.sleep(pause)
        try:
            identity = client.get_caller_identity()
        except Exception as err:  # noqa: BLE001 - every failure is data for the matrix
            out["errors"].append(describe(err))
            continue
        out["succeeded"] += 1
        out["arn"] = identity["Arn"]
        out["access_key_id"] = signed_with["key"]
        if not out["access_key_ids"] or out["access_key_ids"][-1] != signed_with["key"]:
            out["access_key_ids"].append(signed_with["key"])
    if os.environ.get("CREDVEND_SDK_REPORT_ACCOUNT") == "1" and out["succeeded"]:
        # The session's cached credentials (no new fetch while they are fresh): did the SDK
        # keep the endpoint's AccountId?
        out["account_id"] = session.get_credentials().get_frozen_credentials().account_id


def main():
    calls = env_int("CREDVEND_SDK_CALLS", 1)
    out = {"sdk": "python", "ok": False, "access_key_ids": [], "calls": calls, "succeeded": 0, "errors": []}
    try:
        run(out)
    except Exception as err:  # noqa: BLE001 - e.g. the client could not be built at all
        out["error"] = describe(err)
    out["ok"] = out["succeeded"] == calls and "error" not in out
    if not out["ok"] and "error" not in out and out["errors"]:
        out["error"] = out["errors"][0]
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
