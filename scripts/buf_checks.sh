#!/usr/bin/env bash
# Lint the protobuf contract and check it for breaking changes against an earlier commit.
#
#   scripts/buf_checks.sh            # lint; breaking check against HEAD~1
#   scripts/buf_checks.sh main       # lint; breaking check against another git ref
#   BUF_AGAINST_REF=origin/main scripts/buf_checks.sh
#
# Rules come from proto/buf.yaml (lint STANDARD, breaking FILE). buf is the npm package
# @bufbuild/buf pinned in package-lock.json (`npm ci` installs it). The breaking check is
# skipped, with a message, when there is no such commit (a fresh repository, a shallow clone)
# or when that commit holds no .proto files under proto/ yet. Exits non-zero on any lint error
# or breaking change.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

buf="${BUF:-$root/node_modules/.bin/buf}"
if [[ ! -x "$buf" ]]; then
    echo "buf_checks: $buf not found; run 'npm ci' at the repository root" >&2
    exit 3
fi

echo "buf_checks: buf $("$buf" --version) lint proto" >&2
"$buf" lint proto

against="${1:-${BUF_AGAINST_REF:-HEAD~1}}"
if ! git rev-parse --git-dir >/dev/null 2>&1; then
    echo "buf_checks: not a git repository; breaking check skipped" >&2
    exit 0
fi
if ! commit="$(git rev-parse --verify --quiet "${against}^{commit}")"; then
    echo "buf_checks: no commit '${against}' (no earlier commit yet, or a shallow clone);" \
         "breaking check skipped" >&2
    exit 0
fi
if [[ -z "$(git ls-tree -r --name-only "$commit" -- proto/ | grep '\.proto$' || true)" ]]; then
    echo "buf_checks: commit '${against}' (${commit:0:12}) has no .proto files under proto/;" \
         "breaking check skipped" >&2
    exit 0
fi

echo "buf_checks: buf breaking proto --against .git#subdir=proto,ref=${commit:0:12}" >&2
"$buf" breaking proto --against ".git#subdir=proto,ref=${commit}"
echo "buf_checks: no breaking changes against ${against}" >&2
