#!/usr/bin/env bash
# Renders deploy/nginx/chatd.conf + nginx.conf for one TLS front into OUT:
#   deploy/nginx/render.sh OUT --https ADDR:PORT --http ADDR:PORT --cert PEM --key PEM \
#       --upstream host:port[,host:port...]
# writes OUT/nginx.conf (run: nginx -c OUT/nginx.conf) and OUT/chatd.conf, with
# logs, pid and temp folders in OUT. Used by tools/demo.sh, tests/deploy/run.sh
# and the compose front image (deploy/nginx/Dockerfile).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: render.sh OUT --https A:P --http A:P --cert F --key F --upstream H:P[,H:P]}
shift
HTTPS=443 HTTP=80 CERT=/etc/ssl/chatd/fullchain.pem KEY=/etc/ssl/chatd/privkey.pem UP=127.0.0.1:8080
while [ $# -gt 0 ]; do
    case $1 in
    --https) HTTPS=$2; shift 2 ;;
    --http) HTTP=$2; shift 2 ;;
    --cert) CERT=$2; shift 2 ;;
    --key) KEY=$2; shift 2 ;;
    --upstream) UP=$2; shift 2 ;;
    *) echo "render.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
servers=""
IFS=, read -r -a ups <<<"$UP"
for u in "${ups[@]}"; do servers+="    server $u max_fails=3 fail_timeout=5s;\n"; done
# drop the sample's upstream servers and IPv6 listens, then put ours in
awk -v servers="$servers" '
    /^    server [0-9]/ { next }
    /listen \[::\]/ { next }
    /^    least_conn;/ { print; printf "%s", servers; next }
    { print }' "$HERE/chatd.conf" |
sed -e "s#listen 80;#listen $HTTP;#" \
    -e "s#listen 443 ssl;#listen $HTTPS ssl;#" \
    -e "s#/etc/ssl/chatd/fullchain.pem#$CERT#" \
    -e "s#/etc/ssl/chatd/privkey.pem#$KEY#" \
    -e "s#/var/log/nginx/#$OUT/#g" >"$OUT/chatd.conf"
sed -e "s#@RUN@#$OUT#g" "$HERE/nginx.conf" >"$OUT/nginx.conf"
mkdir -p "$OUT/client_body" "$OUT/proxy" "$OUT/fastcgi" "$OUT/uwsgi" "$OUT/scgi"
