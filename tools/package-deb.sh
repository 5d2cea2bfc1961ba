#!/usr/bin/env bash
# Builds the Debian package meshd_VERSION_ARCH.deb (Debian 12): /usr/bin/meshd and meshctl, the unit
# from systemd/meshd.service (as /lib/systemd/system/meshd.service, running /usr/bin/meshd), the
# default config and price table as conffiles in /etc/meshd, the Prometheus rules and Grafana
# dashboard in /usr/share/meshd, man pages, and maintainer scripts (tools/deb/) that enable the unit
# and start it when systemd runs. The unit keeps DynamicUser=: no account is created, and systemd
# makes /var/lib/meshd (StateDirectory=) on first start; purging the package removes it.
#   tools/package-deb.sh                   # release build with the Swift runtime linked statically
#   tools/package-deb.sh --bin-dir DIR     # package DIR/meshd and DIR/meshctl as they are built; a
#                                          # Swift runtime they link dynamically goes to /usr/lib/meshd
#   tools/package-deb.sh --out DIR         # write the .deb to DIR (default: the repository root)
#   tools/package-deb.sh --fast            # gzip -1 instead of xz: a bigger .deb, built in seconds
# Then: apt install ./meshd_*.deb   (VERSION is MeshdVersion.version, ARCH dpkg's architecture)
# Prints the path of the .deb. Installs what it needs (dpkg-dev, binutils, help2man, patchelf) if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
die() { echo "package-deb.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

BIN_DIR="" OUT_DIR="$ROOT" COMPRESS=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] && [ -n "$2" ] || die "--bin-dir needs a directory"; BIN_DIR="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] && [ -n "$2" ] || die "--out needs a directory"; OUT_DIR="$2"; shift 2 ;;
    --fast) COMPRESS=(-Zgzip -z1); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "package-deb.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

# Tools it runs, and for a release build the -dev packages of the libraries meshd links: installed if missing.
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
pkgs=(dpkg-dev binutils help2man patchelf)
[ -n "$BIN_DIR" ] || pkgs+=(libzmq3-dev libavahi-client-dev libcurl4-openssl-dev libsqlite3-dev pkg-config)
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}..." >&2
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; } ||
    die "apt-get install ${need[*]} failed"
fi

VERSION="$(sed -n 's/^ *public static let version = "\([^"]*\)".*/\1/p' Sources/MeshCore/Version.swift)"
[ -n "$VERSION" ] || die "no 'static let version' in Sources/MeshCore/Version.swift"
ARCH="$(dpkg --print-architecture)"
MAINTAINER="meshd maintainers <maintainers@users.noreply.b-seed-1e7350dc.example>"
# Dates in the changelog and man pages: the last commit's, so that a rebuild gives the same files.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

if [ -z "$BIN_DIR" ]; then
  command -v swift >/dev/null || die "swift is missing: install the Swift 6 toolchain, or package prebuilt binaries with --bin-dir"
  echo "building meshd and meshctl (release, Swift runtime linked statically)..." >&2
  for product in meshd meshctl; do
    if ! swift build -c release --static-swift-stdlib --product "$product" 2>&1 | { grep -vE '^warning: prohibited flag' || true; } >&2; then
      die "swift build -c release --static-swift-stdlib --product $product failed"
    fi
  done
  BIN_DIR="$(swift build -c release --static-swift-stdlib --show-bin-path)" || die "swift build --show-bin-path failed"
fi
for b in meshd meshctl; do
  [ -f "$BIN_DIR/$b" ] && [ -x "$BIN_DIR/$b" ] || die "no executable $BIN_DIR/$b (build it, or leave out --bin-dir for a release build)"
done
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

umask 022
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# dpkg-shlibdeps wants a source tree: debian/control naming the package, and the package at debian/meshd.
mkdir -p "$WORK/debian"
printf 'Source: meshd\n\nPackage: meshd\nArchitecture: any\n' > "$WORK/debian/control"
PKG="$WORK/debian/meshd"
install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/meshd" \
  "$PKG/usr/share/meshd/prometheus" "$PKG/usr/share/meshd/grafana" "$PKG/usr/share/doc/meshd" \
  "$PKG/usr/share/man/man1" "$PKG/usr/share/man/man8" "$PKG/usr/share/lintian/overrides"

# --- binaries: stripped as dh_strip does; the Swift runtime bundled if they link it dynamically ---
install -m 0755 "$BIN_DIR/meshd" "$BIN_DIR/meshctl" "$PKG/usr/bin/"
ldd_out="$(ldd "$BIN_DIR/meshd" "$BIN_DIR/meshctl")" || die "ldd $BIN_DIR/meshd $BIN_DIR/meshctl failed"
missing="$(grep 'not found' <<<"$ldd_out" || true)"
[ -z "$missing" ] || die "libraries meshd or meshctl need are not found: $(tr -s ' \t\n' ' ' <<<"$missing")"
# Libraries the dynamic loader finds in the Swift toolchain (the directory of libswiftCore.so).
swift_libs="$(awk '$2 == "=>" { print $3 }' <<<"$ldd_out" | sort -u)"
swift_dir="$(dirname "$(grep -m1 '/libswiftCore\.so$' <<<"$swift_libs" || echo /nonexistent/x)")"
bundled=0
for lib in $swift_libs; do
  [ "$(dirname "$lib")" = "$swift_dir" ] || continue
  install -D -m 0644 "$lib" "$PKG/usr/lib/meshd/$(basename "$lib")"
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$PKG/usr/lib/meshd/$(basename "$lib")"
  bundled=$((bundled + 1))
done
for b in meshd meshctl; do
  strip --remove-section=.comment --remove-section=.note "$PKG/usr/bin/$b"
  # A build's RUNPATH names the toolchain (or $ORIGIN, meaning /usr/bin): replace or drop it.
  if [ "$bundled" -gt 0 ]; then
    patchelf --set-rpath /usr/lib/meshd "$PKG/usr/bin/$b"
  elif [ -n "$(patchelf --print-rpath "$PKG/usr/bin/$b")" ]; then
    patchelf --remove-rpath "$PKG/usr/bin/$b"
  fi
done
[ "$bundled" -eq 0 ] || echo "bundled $bundled Swift runtime libraries from $swift_dir in /usr/lib/meshd" >&2

# --- the unit: the repository's, running the binaries from /usr/bin ---
sed 's|/usr/local/bin/|/usr/bin/|g' systemd/meshd.service > "$PKG/lib/systemd/system/meshd.service"
chmod 0644 "$PKG/lib/systemd/system/meshd.service"
left="$(awk '!/^[[:space:]]*[#;]/ && /\/usr\/local\// { print FNR": "$0 }' "$PKG/lib/systemd/system/meshd.service")"
[ -z "$left" ] || die "the packaged unit still names /usr/local: $left"

# --- configuration (conffiles) and shared data ---
install -m 0644 Config/meshd.yaml Config/prices.yaml "$PKG/etc/meshd/"
install -m 0644 Config/prometheus/* "$PKG/usr/share/meshd/prometheus/"
install -m 0644 Config/grafana/* "$PKG/usr/share/meshd/grafana/"
(cd "$PKG" && find etc -type f | sort | sed 's|^|/|') > "$PKG/DEBIAN/conffiles"

# --- documentation: copyright, changelog, man pages from the programs' own --help ---
install -m 0644 tools/deb/copyright "$PKG/usr/share/doc/meshd/copyright"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
  printf 'meshd (%s) unstable; urgency=medium\n\n' "$VERSION"
  printf '  * Built by tools/package-deb.sh from commit %s.\n\n' "$commit"
  printf ' -- %s  %s\n' "$MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$PKG/usr/share/doc/meshd/changelog.gz"
help2man -N -s 8 --version-string="$VERSION" -n "LLM inference mesh node (OpenAI and Ollama APIs)" \
  "$BIN_DIR/meshd" | gzip -9n > "$PKG/usr/share/man/man8/meshd.8.gz" || die "help2man $BIN_DIR/meshd failed"
help2man -N -s 1 --version-string="$VERSION" -n "see and steer a meshd mesh through the local node's admin socket" \
  "$BIN_DIR/meshctl" | gzip -9n > "$PKG/usr/share/man/man1/meshctl.1.gz" || die "help2man $BIN_DIR/meshctl failed"
if [ -f tools/deb/lintian-overrides ]; then
  install -m 0644 tools/deb/lintian-overrides "$PKG/usr/share/lintian/overrides/meshd"
else
  rmdir "$PKG/usr/share/lintian/overrides" "$PKG/usr/share/lintian"
fi

# --- control files ---
install -m 0755 tools/deb/postinst tools/deb/prerm tools/deb/postrm "$PKG/DEBIAN/"
shlib_targets=("$PKG/usr/bin/meshd" "$PKG/usr/bin/meshctl")
[ "$bundled" -eq 0 ] || shlib_targets+=("$PKG"/usr/lib/meshd/*.so)
depends="$(cd "$WORK" && dpkg-shlibdeps -O "${shlib_targets[@]/#/-e}" 2>"$WORK/shlibdeps.err")" ||
  die "dpkg-shlibdeps failed: $(cat "$WORK/shlibdeps.err")"
depends="$(sed -n 's/^shlibs:Depends=//p' <<<"$depends")"
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies: $(cat "$WORK/shlibdeps.err")"
# A release build packs its relative relocations (Package.swift's shippedLink), which only glibc
# 2.36's loader reads; dpkg-shlibdeps goes by the symbols used and misses that version need.
if readelf -V "$PKG/usr/bin/meshd" "$PKG/usr/bin/meshctl" | grep 'GLIBC_ABI_DT_RELR' >/dev/null; then
  depends="$(sed -E 's/libc6 \(>= 2\.([0-9]|[12][0-9]|3[0-5])(\.[0-9]+)?\)/libc6 (>= 2.36)/' <<<"$depends")"
fi
# deb-systemd-helper and deb-systemd-invoke, used by the maintainer scripts.
depends="$depends, init-system-helpers (>= 1.52)"
installed_size="$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)"
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@MAINTAINER@|$MAINTAINER|" \
    -e "s|@INSTALLED_SIZE@|$installed_size|" -e "s|@DEPENDS@|$depends|" tools/deb/control > "$PKG/DEBIAN/control"
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/control" "$PKG/DEBIAN/conffiles" "$PKG/DEBIAN/md5sums"

DEB="$OUT_DIR/meshd_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group "${COMPRESS[@]}" --build "$PKG" "$DEB" >/dev/null || die "dpkg-deb --build failed"
echo "$DEB"
