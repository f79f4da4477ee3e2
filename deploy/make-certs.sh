#!/bin/sh
# Makes the certificates of the disconnected agent's control plane with openssl:
# a CA, the agent's server certificate, and one client certificate per name.
#
#   deploy/make-certs.sh DIR AGENT-NAMES [CLIENT...]
#
# AGENT-NAMES: the agent's host names and IP addresses, comma separated, as
#   airlockctl's --server will name it (airlock.site.example,10.0.0.5).
# CLIENT: a name per administrator or tool (admin, monitoring, ...).
#
# Writes DIR/ca.crt and DIR/ca.key (keep ca.key offline), DIR/agent.crt and
# DIR/agent.key (grpc.tls.cert and .key; ca.crt is grpc.tls.clientCA and every
# client's --ca), and DIR/clients/CLIENT.crt and .key (airlockctl --cert, --key).
# An existing CA is reused, so the script can add clients later. Keys are P-256,
# private files mode 600. Separate CAs for server and clients work too: name the
# client CA in grpc.tls.clientCA and the server's CA in --ca.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 DIR AGENT-NAMES [CLIENT...]" >&2
    exit 64
fi
dir=$1
names=$2
shift 2
umask 077
mkdir -p "$dir/clients"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f ca.key ]; then
    key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=Airlock site CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
    chmod 644 ca.crt
fi

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
sign() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days 825 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
    chmod 644 "$1.crt"
}

san=""
first=""
for n in $(printf '%s' "$names" | tr ',' ' '); do
    [ -n "$first" ] || first=$n
    case $n in
        *:*) kind=IP ;;
        *[!0-9.]*) kind=DNS ;;
        *) kind=IP ;;
    esac
    san="${san:+$san,}$kind:$n"
done
sign agent "$first" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"

for c in "$@"; do
    sign "clients/$c" "$c" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
echo "wrote $dir: ca.crt, agent.crt/.key ($san), clients: $*"
