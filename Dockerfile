# syntax=docker/dockerfile:1
# The calico-rs/cni image: calico (calico-cni), calico-ipam and their installer, which is the
# entrypoint, as `install` is in Calico's CNI image. The same image, byte for byte apart from
# file times, as scripts/build-image.sh writes without a container engine: both take the root
# filesystem from scripts/image-rootfs.sh run on Debian 12 (bash-static, busybox-static, curl, jq).
#
#   scripts/build-release.sh          # static binaries into target/x86_64-unknown-linux-gnu/release
#   docker build -t calico-rs/cni:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# With CARGO_TARGET_DIR set, the binaries are elsewhere: name their directory as the `bin`
# context, e.g. --build-context bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release.
# The tag's version is [workspace.package] version in Cargo.toml.

# The binaries, from the build context unless --build-context bin=DIR replaces this stage.
FROM scratch AS bin
COPY target/x86_64-unknown-linux-gnu/release/calico-cni target/x86_64-unknown-linux-gnu/release/calico-ipam /

FROM debian:12-slim AS rootfs
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bash-static busybox-static curl jq \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/image-rootfs.sh scripts/install-cni.sh /src/scripts/
COPY --from=bin calico-cni calico-ipam /src/bin/
RUN /src/scripts/image-rootfs.sh /src/bin /rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
ARG VERSION=0.1.0
ARG REVISION=unknown
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title=calico-rs-cni \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION \
      org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.description="calico-rs CNI plugins (calico, calico-ipam) and their installer"
ENTRYPOINT ["/usr/local/bin/install-cni.sh", "--from=/opt/calico-rs/bin"]
