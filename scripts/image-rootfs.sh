#!/usr/bin/env bash
# image-rootfs.sh BIN_DIR ROOTFS: the root filesystem of the calico-rs/cni image, assembled from
# the Debian 12 system this runs on (the Dockerfile's build stage, or this machine for
# scripts/build-image.sh), which must have bash-static, busybox-static, curl and jq installed:
#
#   /opt/calico-rs/bin/calico-cni, calico-ipam   BIN_DIR's binaries (static: scripts/build-release.sh)
#   /usr/local/bin/install-cni.sh                 the installer, the image's entrypoint
#   /usr/bin/bash                                 Debian's bash-static (the installer is a bash script)
#   /usr/bin/busybox and its applets              Debian's busybox-static: sh, env, cp, mv, sed,
#                                                 awk, date, base64, stat, mktemp, sort, ...
#   /usr/bin/curl, jq, cksum and their libraries  dynamically linked, from Debian's curl, jq and
#                                                 coreutils: the TokenRequest, the conflist's JSON
#                                                 check, noticing a rotated service-account token
#   /usr/share/doc/PKG/copyright                  for every Debian package a file came from
#   /tmp (1777), /etc/passwd, /etc/group, /etc/nsswitch.conf; merged /usr (/bin -> usr/bin, ...)
#
# ROOTFS must not exist or be empty. Run as root so that every file is owned by root (the image
# writer, scripts/oci-image.py, records uid and gid 0 anyway).
set -euo pipefail

die() { echo "image-rootfs.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
BIN_DIR=$1 ROOT=$2
REPO=$(cd "$(dirname "$0")/.." && pwd)
INSTALLER=$REPO/scripts/install-cni.sh
for f in "$BIN_DIR/calico-cni" "$BIN_DIR/calico-ipam"; do
  [ -f "$f" ] && [ -x "$f" ] || die "no executable $f (build it with scripts/build-release.sh)"
done
[ -f "$INSTALLER" ] || die "no $INSTALLER"
for f in /usr/bin/bash-static /usr/bin/busybox /usr/bin/curl /usr/bin/jq /usr/bin/cksum; do
  [ -x "$f" ] || die "no $f: install Debian's bash-static, busybox-static, curl, jq and coreutils"
done
/usr/bin/busybox --list-full >/dev/null 2>&1 || die "/usr/bin/busybox is not busybox"
if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ]; then die "$ROOT is not empty"; fi

umask 022
mkdir -p "$ROOT"
cd "$ROOT"
mkdir -p usr/bin usr/sbin usr/lib/x86_64-linux-gnu usr/lib64 usr/local/bin usr/share/doc \
  opt/calico-rs/bin etc tmp var/run root host
chmod 1777 tmp
ln -s usr/bin bin
ln -s usr/sbin sbin
ln -s usr/lib lib
ln -s usr/lib64 lib64

SOURCES=() # every file taken from the system, for the copyright files

# put SRC DEST MODE: a regular file (symlinks followed).
put() {
  cp -L -- "$1" "$2"
  chmod "$3" "$2"
}

# with_libs SRC DEST: an executable and the shared libraries it loads, ld.so included.
with_libs() {
  local lib
  put "$1" "$2" 0755
  SOURCES+=("$1")
  while read -r lib; do
    [ -n "$lib" ] || continue
    case $lib in
      */ld-linux-x86-64.so.2)
        [ -e usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ] ||
          put "$lib" usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 0755
        [ -L usr/lib64/ld-linux-x86-64.so.2 ] ||
          ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 usr/lib64/ld-linux-x86-64.so.2 ;;
      /*)
        [ -e "usr/lib/x86_64-linux-gnu/${lib##*/}" ] || put "$lib" "usr/lib/x86_64-linux-gnu/${lib##*/}" 0644 ;;
      *) die "ldd $1: cannot place $lib" ;;
    esac
    SOURCES+=("$lib")
  done < <(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

# Ours.
put "$BIN_DIR/calico-cni" opt/calico-rs/bin/calico-cni 0755
put "$BIN_DIR/calico-ipam" opt/calico-rs/bin/calico-ipam 0755
put "$INSTALLER" usr/local/bin/install-cni.sh 0755

# The shell and the tools.
put /usr/bin/bash-static usr/bin/bash 0755
put /usr/bin/busybox usr/bin/busybox 0755
SOURCES+=(/usr/bin/bash-static /usr/bin/busybox)
while read -r applet; do
  case $applet in
    */busybox|linuxrc|"") continue ;; # linuxrc: an init for initramfs
    bin/* | usr/bin/*) dest=usr/bin/${applet##*/} link=busybox ;;
    sbin/* | usr/sbin/*) dest=usr/sbin/${applet##*/} link=../bin/busybox ;;
    *) die "busybox applet in an unexpected place: $applet" ;;
  esac
  [ -e "$dest" ] || [ -L "$dest" ] || ln -s "$link" "$dest"
done < <(/usr/bin/busybox --list-full | LC_ALL=C sort)
with_libs /usr/bin/curl usr/bin/curl
with_libs /usr/bin/jq usr/bin/jq
rm -f usr/bin/cksum # busybox has no cksum; GNU's, which the installer was written against
with_libs /usr/bin/cksum usr/bin/cksum

# The copyright file of every Debian package a file came from.
# The owner of each file, by its own path, its target's, or the target's path before the /usr
# merge (one dpkg -S for all of them: it is slow).
declare -A OWNER=() PKGS=()
candidates=()
for f in "${SOURCES[@]}"; do
  real=$(readlink -f "$f")
  candidates+=("$f" "$real" "${real#/usr}")
done
while IFS= read -r line; do
  [[ $line == *": /"* ]] || continue
  pkgs=${line%%: /*} path=/${line#*: /}
  OWNER[$path]=${pkgs%%[:,]*}
done < <(dpkg -S "${candidates[@]}" 2>/dev/null || true)
for f in "${SOURCES[@]}"; do
  real=$(readlink -f "$f") pkg=
  for p in "$f" "$real" "${real#/usr}"; do
    if [ -n "${OWNER[$p]:-}" ]; then pkg=${OWNER[$p]}; break; fi
  done
  [ -n "$pkg" ] || die "no Debian package owns $f"
  PKGS[$pkg]=1
done
for pkg in $(printf '%s\n' "${!PKGS[@]}" | LC_ALL=C sort); do
  src=/usr/share/doc/$pkg/copyright
  [ -f "$src" ] || die "no $src"
  mkdir -p "usr/share/doc/$pkg"
  put "$src" "usr/share/doc/$pkg/copyright" 0644
done

printf 'root:x:0:0:root:/root:/bin/sh\n' >etc/passwd
printf 'root:x:0:\n' >etc/group
printf 'hosts: files dns\n' >etc/nsswitch.conf
chmod 0644 etc/passwd etc/group etc/nsswitch.conf

# It works: the shell runs the installer's help, and the tools it needs are there.
chroot_ok() { command -v chroot >/dev/null && [ "$(id -u)" = 0 ]; }
if chroot_ok; then
  chroot . /usr/local/bin/install-cni.sh --help >/dev/null || die "install-cni.sh --help fails in the rootfs"
  chroot . /usr/bin/curl --version >/dev/null || die "curl does not run in the rootfs"
  chroot . /usr/bin/jq --version >/dev/null || die "jq does not run in the rootfs"
  chroot . /usr/bin/cksum </dev/null >/dev/null || die "cksum does not run in the rootfs"
  chroot . /opt/calico-rs/bin/calico-ipam --version >/dev/null || die "calico-ipam does not run in the rootfs"
fi
