#!/usr/bin/env bash
# `make certs`: a demo certificate authority and the certificates of the demo stack.
#
#   scripts/make-certs.sh [DIR]      (default deploy/certs; existing files are kept)
#
# DIR/ca.crt, ca.key            the demo CA (trusted by Envoy for the services, and by curl)
# DIR/envoy.crt, envoy.key      Envoy's HTTPS listener: localhost, 127.0.0.1, ::1, envoy,
#                               gateway.portcullis.test
# DIR/services.crt, services.key the demo services and identity provider: *.portcullis.internal
#                               and each service's name in it (the SNI and SAN Envoy checks),
#                               localhost, 127.0.0.1
#
# EC P-256 keys; demo only: the CA key sits next to its certificate. Never use these outside the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-deploy/certs}"
mkdir -p "$dir"
cd "$dir"

if [ -s ca.crt ] && [ -s ca.key ] && [ -s envoy.crt ] && [ -s envoy.key ] \
    && [ -s services.crt ] && [ -s services.key ] \
    && openssl x509 -checkend 86400 -noout -in envoy.crt >/dev/null \
    && openssl x509 -checkend 86400 -noout -in services.crt >/dev/null; then
    echo "certificates in $dir are present and valid (delete them to make new ones)"
    exit 0
fi

umask 077
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=Portcullis demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt

# leaf NAME SAN: a server certificate signed by the demo CA.
leaf() {
    local name="$1" san="$2"
    openssl ecparam -name prime256v1 -genkey -noout -out "$name.key.tmp" 2>/dev/null
    # Keys in PKCS#8, which every consumer here (Envoy, rustls, Grafana) reads.
    openssl pkcs8 -topk8 -nocrypt -in "$name.key.tmp" -out "$name.key"
    rm -f "$name.key.tmp"
    openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
        "subjectAltName=$san" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days 825 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}
leaf envoy "DNS:localhost,IP:127.0.0.1,IP:::1,DNS:envoy,DNS:gateway.portcullis.test"
leaf services "DNS:*.portcullis.internal,DNS:orders.portcullis.internal,DNS:orders-beta.portcullis.internal,DNS:catalog.portcullis.internal,DNS:idp.portcullis.internal,DNS:localhost,IP:127.0.0.1"
rm -f ca.srl
# Readable by the containers' non-root users (demo keys only).
chmod 644 ./*.crt ./*.key
echo "demo certificates written to $dir (CA: $dir/ca.crt)"
