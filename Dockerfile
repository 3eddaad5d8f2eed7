# The quic-ingress image: one static binary, a CA bundle for public backends, a passwd
# entry for the non-root user, an empty /tmp. No shell, no package manager, nothing pulled.
#
# The binary is built by cargo outside the image build (musl, statically linked) and staged
# with the CA bundle by `make image-context` under target/image/context; the build context
# is the repository root, and .dockerignore lets only that directory in. So the image builds
# with docker, podman or buildah without a registry or a Rust toolchain image:
#
#   make image                     # here: an OCI archive in target/image/quic-ingress.oci.tar
#   make image-context && docker build -t REGISTRY/quic-ingress:TAG .   # on a workstation
FROM scratch
COPY target/image/context/rootfs/ /
USER 65532:65532
ENV PATH=/usr/local/bin
# The chart passes subcommands as args (controller, demo-backend, get).
ENTRYPOINT ["/usr/local/bin/quic-ingress"]
CMD ["--help"]
