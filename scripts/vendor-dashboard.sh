#!/usr/bin/env bash
# Re-vendors the dashboard's browser libraries from the npm registry into api/dashboard/static/vendor/.
# Run it by hand to upgrade (bump the version below, run, commit the result); nothing runs it at
# build or run time, and no Node is needed to serve the dashboard: the files are committed as built.
# Needs only `npm` (for `npm pack`, which downloads the published tarball) and `tar`.
set -euo pipefail
UPLOT_VERSION=1.6.32
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/api/dashboard/static/vendor/uplot"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null && tar xzf "uplot-$UPLOT_VERSION.tgz")
rm -rf "$dest" && mkdir -p "$dest"
cp "$work/package/dist/uPlot.esm.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$dest/"
echo "$UPLOT_VERSION" > "$dest/VERSION"
echo "vendored uplot $UPLOT_VERSION into ${dest#"$root"/}"
