#!/usr/bin/env bash
# Make a throw-away CA and a server certificate for 127.0.0.1/localhost (local TLS runs and tests).
#   make_local_certs.sh OUT_DIR     -> OUT_DIR/{ca.crt,ca.key,server.crt,server.key}
set -euo pipefail
OUT="${1:?usage: make_local_certs.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$OUT"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=fs-local-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
  -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.crt
echo "$OUT"
