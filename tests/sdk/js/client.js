// The JavaScript conformance client: resolves credentials through the AWS SDK for
// JavaScript v3's Node provider chain (fromNodeProviderChain), as an application in a pod
// would, calls STS GetCallerIdentity CREDVEND_SDK_CALLS times and prints one JSON line for the
// Rust driver (tests/sdk_conformance.rs). Region and the STS endpoint come from AWS_REGION and
// AWS_ENDPOINT_URL_STS. Dependencies are resolved through NODE_PATH (installed outside the
// clone by scripts/sdk-clients.sh), so this file runs from the repository as is.
"use strict";

const { fromNodeProviderChain } = require("@aws-sdk/credential-providers");
const { STSClient, GetCallerIdentityCommand } = require("@aws-sdk/client-sts");

const envInt = (name, fallback) => {
  const n = Number.parseInt(process.env[name] ?? "", 10);
  return Number.isNaN(n) ? fallback : n;
};

// The version that actually loaded, so the matrix names what ran.
const sdkVersion = () => {
  try {
    return require("@aws-sdk/client-sts/package.json").version;
  } catch {
    return "unknown";
  }
};

const describe = (err) => `${err?.name ?? "Error"}: ${err?.message ?? String(err)}`;

async function main() {
  const calls = envInt("CREDVEND_SDK_CALLS", 1);
  const pauseMs = envInt("CREDVEND_SDK_SLEEP_MS", 0);
  const out = { sdk: "js", version: sdkVersion(), ok: false, access_key_ids: [], calls, succeeded: 0, errors: [] };

  const client = new STSClient({ credentials: fromNodeProviderChain() });
  let signedWith = "";
  // Read the key from the signed request (the deserialize step is closest to the wire):
  // asking the provider instead would itself fetch whenever the SDK is inside its refresh
  // window, and distort the fetch counts.
  client.middlewareStack.add(
    (next) => async (args) => {
      const auth = args.request?.headers?.authorization ?? args.request?.headers?.Authorization ?? "";
      const m = /Credential=([^/,\s]+)\//.exec(auth);
      if (m) signedWith = m[1];
      return next(args);
    },
    { step: "deserialize", name: "credvendRecordSigningKey", priority: "low" },
  );

  for (let i = 0; i < calls; i++) {
    if (i > 0 && pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
    try {
      const id = await client.send(new GetCallerIdentityCommand({}));
      out.succeeded++;
      out.arn = id.Arn;
      out.access_key_id = signedWith;
      if (out.access_key_ids.at(-1) !== signedWith) out.access_key_ids.push(signedWith);
    } catch (err) {
      out.errors.push(describe(err));
    }
  }
  if (process.env.CREDVEND_SDK_REPORT_ACCOUNT === "1" && out.succeeded > 0) {
    // The client's memoized identity: no new fetch while it is fresh.
    out.account_id = (await client.config.credentials()).accountId ?? null;
  }
  out.ok = out.succeeded === calls;
  if (!out.ok && out.errors.length > 0) out.error = out.errors[0];
  return out;
}

main()
  .catch((err) => ({ sdk: "js", ok: false, access_key_ids: [], errors: [], error: describe(err) }))
  .then((out) => {
    console.log(JSON.stringify(out));
    process.exitCode = out.ok ? 0 : 1;
  });
