#!/bin/sh
# One mra-gateway node in a container: initialise its home on first start, then serve.
#
# Read on first start only (the home lives on the volume; later starts reuse it):
#   MRAGW_INIT_ADMIN     administration code, e.g. JP (required the first time)
#   MRAGW_INIT_ENDPOINT  HOST:PORT partners dial, written into the trust statement
#                        (default: this container's hostname, port 7443)
# Read on every start, by every mragw command (a config key, MRAGW_<SECTION>__<KEY>):
#   MRAGW_DATABASE__URL  postgresql+asyncpg://USER:PASSWORD@HOST/DB; unset: a SQLite file in
#                        the home. Also given to `mragw init`, which creates the schema there.
# MRAGW_HOME             the node's home directory (the image sets /var/lib/mragw/node)
#
# Listeners, as in the netns interop harness: partners on 0.0.0.0:7443 (mTLS); the local
# admin API on 127.0.0.1:7444 only (mTLS, admin certificate; `mragw health`, `--target`);
# metrics and the read-only status page on 0.0.0.0:9100. Arguments go to `mragw serve`.
set -eu
HOME_DIR="${MRAGW_HOME:-/var/lib/mragw/node}"

# Arguments: extra `mragw init` options (a function has its own "$@", so the container's
# arguments stay for `mragw serve`).
init_node() {
    : "${MRAGW_INIT_ADMIN:?set MRAGW_INIT_ADMIN to the administration code, e.g. JP}"
    mragw init --admin "$MRAGW_INIT_ADMIN" --home "$HOME_DIR" \
        --listen 0.0.0.0:7443 --admin-listen 127.0.0.1:7444 --http-listen 0.0.0.0:9100 \
        --endpoint "${MRAGW_INIT_ENDPOINT:-$(hostname):7443}" "$@"
    echo "initialised $MRAGW_INIT_ADMIN in $HOME_DIR: confirm the fingerprint above out of band" >&2
}

if [ ! -f "$HOME_DIR/mragw.toml" ]; then
    if [ -n "${MRAGW_DATABASE__URL:-}" ]; then
        init_node --db "$MRAGW_DATABASE__URL"
    else
        init_node
    fi
fi

exec mragw serve --home "$HOME_DIR" "$@"
