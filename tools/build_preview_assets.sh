#!/usr/bin/env bash
# Builds the live preview's browser assets (idempotent; a second run costs a second):
# installs the three.js version pinned in mmface4d_stream/preview/web/package-lock.json from the
# npm registry and copies the modules the page imports into
# mmface4d_stream/preview/web/static/vendor/ (gitignored), beside three.js's licence.
# The preview serves them itself: nothing is fetched from a CDN at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

WEB=mmface4d_stream/preview/web
VENDOR="$WEB/static/vendor"
STAMP="$VENDOR/.built-from"
FILES="three.module.js three.core.js OrbitControls.js"

want="$(cat "$WEB/package.json" "$WEB/package-lock.json" | sha256sum | cut -d' ' -f1)"
complete=1
for f in $FILES; do [ -f "$VENDOR/$f" ] || complete=0; done
if [ "$complete" = 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "build_preview_assets: npm is not installed (Debian: apt-get install npm); the live preview page needs it once to vendor three.js" >&2
  exit 1
fi

echo "build_preview_assets: installing three.js with npm into $WEB/node_modules"
(cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error)

THREE="$WEB/node_modules/three"
tmp="$(mktemp -d "$WEB/static/.vendor.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cp "$THREE/build/three.module.js" "$THREE/build/three.core.js" \
   "$THREE/examples/jsm/controls/OrbitControls.js" "$THREE/LICENSE" "$tmp/"
echo "$want" > "$tmp/.built-from"
# Replace the folder whole, so a half-copied vendor/ never passes for a built one.
rm -rf "$VENDOR"
mv "$tmp" "$VENDOR"
chmod 755 "$VENDOR"
trap - EXIT
echo "build_preview_assets: three.js $(node -p "require('./$THREE/package.json').version" 2>/dev/null || echo '?') vendored in $VENDOR"
