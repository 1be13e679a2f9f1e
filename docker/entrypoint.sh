#!/bin/sh
# Initialise the node on first start (MRAGW_ADMIN names the administration), then serve.
set -eu
HOME_DIR=/var/lib/mragw/node
if [ ! -f "$HOME_DIR/mragw.toml" ]; then
    : "${MRAGW_ADMIN:?set MRAGW_ADMIN to the administration code, e.g. JP}"
    mragw init --admin "$MRAGW_ADMIN" --home "$HOME_DIR" \
        --listen 0.0.0.0:7443 --admin-listen 0.0.0.0:7444 --http-listen 0.0.0.0:9100 \
        --endpoint "${MRAGW_ENDPOINT:-$(hostname):7443}" ${MRAGW_DB:+--db "$MRAGW_DB"}
fi
exec mragw serve --home "$HOME_DIR" "$@"
