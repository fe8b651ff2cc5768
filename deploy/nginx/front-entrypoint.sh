#!/bin/sh
# Entry point of the compose TLS front: certificate (mounted or self-signed),
# render the configuration for CHATD_UPSTREAMS, run nginx in the foreground.
set -eu
mkdir -p /etc/ssl/chatd
if [ ! -s /etc/ssl/chatd/fullchain.pem ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=${CHATD_HOSTNAME:-localhost}" \
        -addext "subjectAltName=DNS:${CHATD_HOSTNAME:-localhost},IP:127.0.0.1" \
        -keyout /etc/ssl/chatd/privkey.pem -out /etc/ssl/chatd/fullchain.pem 2>/dev/null
fi
/opt/chatd-front/render.sh /run/chatd-front --https 443 --http 80 \
    --cert /etc/ssl/chatd/fullchain.pem --key /etc/ssl/chatd/privkey.pem \
    --upstream "${CHATD_UPSTREAMS:-chatd-1:8080,chatd-2:8080}"
exec nginx -c /run/chatd-front/nginx.conf -g 'daemon off;'
