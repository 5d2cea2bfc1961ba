#!/usr/bin/env bash
# Makes a throwaway test CA and a server certificate for 127.0.0.1 and localhost signed by it, for
# the fake cloud (Tests/cloud/fake_cloud.py), plus a second CA that signed nothing (a CA file that
# must not be trusted for the server). Idempotent: a directory that already holds a valid set is
# left as it is.
#   Tests/cloud/make-test-ca.sh DIR      # -> DIR/ca.pem DIR/server.pem DIR/server.key DIR/other-ca.pem
set -euo pipefail
DIR="${1:?usage: make-test-ca.sh DIR}"
mkdir -p "$DIR"
if [ -s "$DIR/ca.pem" ] && [ -s "$DIR/server.pem" ] && [ -s "$DIR/server.key" ] && [ -s "$DIR/other-ca.pem" ] &&
   openssl verify -CAfile "$DIR/ca.pem" "$DIR/server.pem" >/dev/null 2>&1 &&
   openssl x509 -in "$DIR/server.pem" -noout -checkend 86400 >/dev/null 2>&1; then
  exit 0
fi
WORK="$(mktemp -d "$DIR/.make-test-ca.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
umask 077
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
cat > ca.ext <<'X'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
X
cat > server.ext <<'X'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
X
for ca in ca other-ca; do
  newkey "$ca.key"
  openssl req -new -key "$ca.key" -subj "/CN=meshd test $ca" -out "$ca.csr"
  openssl x509 -req -in "$ca.csr" -signkey "$ca.key" -days 3650 -sha256 -extfile ca.ext -out "$ca.pem" 2>/dev/null
done
newkey server.key
openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -sha256 -extfile server.ext \
  -out server.pem 2>/dev/null
openssl verify -CAfile ca.pem server.pem >/dev/null
chmod 644 ca.pem other-ca.pem server.pem
# Rename into place one by one, the server key before its certificate, so a concurrent run that
# finds a complete set never sees a certificate without its key.
mv -f ca.pem other-ca.pem ca.key "$DIR/"
mv -f server.key "$DIR/server.key"
mv -f server.pem "$DIR/server.pem"
