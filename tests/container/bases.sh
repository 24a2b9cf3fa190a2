#!/usr/bin/env bash
# Makes local stand-ins for the Dockerfile's two FROM images when they are missing, so the
# Dockerfile builds unchanged on a machine that reaches Debian's and Rust's package registries
# but no container registry:
#
#   docker.io/library/debian:bookworm-slim      debootstrap --variant=minbase bookworm, imported
#   docker.io/library/rust:<tag>-slim-bookworm  that image + gcc, libc6-dev, ca-certificates and
#                                               this machine's own Rust toolchain, laid out as the
#                                               official image lays it out (/usr/local/cargo/bin
#                                               on PATH, CARGO_HOME=/usr/local/cargo)
#
# An image already present under either name (pulled from a registry, or made by an earlier run)
# is left alone. The Rust stand-in also trusts the certificate authorities this machine added to
# /usr/local/share/ca-certificates/ (an egress proxy's, here): without them cargo inside the build
# fails with "self-signed certificate in certificate chain".
#
#   tests/container/bases.sh            # needs root, debootstrap, buildah and podman
set -euo pipefail
cd "$(dirname "$0")/../.."

storage=(--storage-driver vfs)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# The names the Dockerfile asks for, read from it so the two never disagree.
mapfile -t froms < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile)
rust_image="" debian_image=""
for from in "${froms[@]}"; do
    case "$from" in
        rust:*) rust_image="docker.io/library/$from" ;;
        debian:*) debian_image="docker.io/library/$from" ;;
        *) echo "bases.sh: no stand-in recipe for FROM $from (Dockerfile)" >&2; exit 1 ;;
    esac
done
[ -n "$rust_image" ] && [ -n "$debian_image" ] || {
    echo "bases.sh: expected a rust:* and a debian:* FROM in the Dockerfile" >&2
    exit 1
}

exists() { podman "${storage[@]}" image exists "$1"; }

work=$(mktemp -d)
container=""
cleanup() {
    [ -n "$container" ] && buildah "${storage[@]}" rm "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

if ! exists "$debian_image"; then
    echo "making $debian_image with debootstrap (minbase, bookworm) ..."
    debootstrap --variant=minbase bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        echo "bases.sh: debootstrap failed (mirror $mirror; set DEBIAN_MIRROR for another)" >&2
        exit 1
    }
    # What the real slim image leaves out too: downloaded packages, lists, documentation.
    rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/* \
        "$work"/root/usr/share/doc/* "$work"/root/usr/share/man/* "$work"/root/usr/share/info/*
    cat >"$work/root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    tar -C "$work/root" -c . | podman "${storage[@]}" import \
        --change 'CMD ["bash"]' - "$debian_image" >/dev/null
    rm -rf "$work/root"
fi

if ! exists "$rust_image"; then
    echo "making $rust_image from $debian_image and this machine's toolchain ..."
    sysroot=$(rustc --print sysroot)
    want=${rust_image#*rust:}
    want=${want%%-*}
    have=$(rustc --version | awk '{ print $2 }')
    case "$have" in
        "$want" | "$want".*) ;;
        *) echo "bases.sh: warning: the Dockerfile asks for Rust $want, this machine has $have" >&2 ;;
    esac
    container=$(buildah "${storage[@]}" from --pull-never "$debian_image")
    buildah "${storage[@]}" run --isolation chroot "$container" -- sh -c \
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*'
    # The toolchain without its documentation (share/ is 800 MB of HTML).
    for part in bin lib libexec etc; do
        [ -d "$sysroot/$part" ] && buildah "${storage[@]}" copy "$container" "$sysroot/$part" "/usr/local/rust/$part" >/dev/null
    done
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        buildah "${storage[@]}" copy "$container" /usr/local/share/ca-certificates/ /usr/local/share/ca-certificates/ >/dev/null
    fi
    buildah "${storage[@]}" run --isolation chroot "$container" -- sh -c \
        'update-ca-certificates >/dev/null && mkdir -p /usr/local/cargo/bin && for tool in /usr/local/rust/bin/*; do ln -s "$tool" /usr/local/cargo/bin/; done'
    buildah "${storage[@]}" config \
        --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        "$container"
    buildah "${storage[@]}" commit --quiet "$container" "$rust_image" >/dev/null
fi
echo "bases: $debian_image, $rust_image"
