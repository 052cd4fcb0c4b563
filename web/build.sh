#!/bin/sh
# Builds the chat page and the admin page into web/dist/ (flat: the server
# embeds these files; index.html is served at /, admin.html at /admin and
# every other file at /assets/<name>). Needs Node and the dev dependencies of
# clients/js (cd clients/js && npm ci). The output is committed, so running
# roomcast never needs Node.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
lib="$here/../clients/js"
esbuild="$lib/node_modules/.bin/esbuild"
tsc="$lib/node_modules/.bin/tsc"
if [ ! -x "$esbuild" ]; then
  echo "web/build.sh: run 'npm ci' in clients/js first" >&2
  exit 1
fi
"$tsc" -p "$here/tsconfig.json" --noEmit
rm -rf "$here/dist"
mkdir -p "$here/dist"
"$esbuild" "$here/src/app.ts" "$here/src/admin.ts" \
  --bundle --minify --sourcemap=external --format=iife --target=es2020 \
  --legal-comments=none --outdir="$here/dist" --log-level=warning
# Source maps stay out of the binary: they are only for local debugging.
rm -f "$here/dist"/*.map
cp "$here/src/index.html" "$here/src/admin.html" "$here/src/style.css" "$here/dist/"
ls -l "$here/dist"
