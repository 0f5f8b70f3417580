# Patio: one zipapp on a distroless Python.  Build: docker build -t patio .
# Stage 1 builds dist/patio.pyz from the sources (standard library only: nothing to install) and
# lays out the files of the final image under /out: the pyz (0755: the incumbents' commands run
# it through its #!/usr/bin/python3 line), the incumbents' command names linked to it, and two
# directories of Patio's user (no shell later): the state directory /tmp/patio (each container
# has its own) and /models, where Kthena's documented output_dirs live.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY build_pyz.sh ./
COPY patio ./patio
COPY deploy/entrypoints ./deploy/entrypoints
RUN bash build_pyz.sh \
 && install -d -m 0755 /out/app /out/usr /out/usr/local /out/usr/local/bin \
 && install -d -m 1777 /out/tmp \
 && install -d -m 0755 -o 65532 -g 65532 /out/models /out/tmp/patio \
 && install -m 0755 dist/patio.pyz /out/app/patio.pyz \
 && ln -s /app/patio.pyz /out/usr/local/bin/aibrix_runtime \
 && ln -s /app/patio.pyz /out/usr/local/bin/aibrix_download

# Stage 2 holds only the zipapp, on the distroless Python 3 image, as a non-root user.
FROM gcr.io/distroless/python3-debian12:nonroot
# deploy/rootfs/packages.txt lists this base's Debian 12 packages; tests/test_rootfs.py runs the same
# root (assembled by deploy/rootfs/assemble.sh, with these files) as 65532 with the pyz at /app/patio.pyz.
COPY --from=build /out/ /
# The incumbents' commands find Patio: `python -m patio.app` (RoleBasedGroup) and
# `python -m aibrix.downloader` (AIBrix) import from the pyz; `aibrix_runtime` and
# `aibrix_download` (AIBrix) are on PATH (/usr/local/bin is on distroless' PATH).
ENV PYTHONPATH=/app/patio.pyz
# A container's own state directory (the manifests mount an emptyDir there); outside the image the
# default is per user, engine and port (docs/configuration.md).
ENV PATIO_STATE_DIR=/tmp/patio
# 65532 is the "nonroot" user of the distroless image; numeric so the runtime can verify non-root.
USER 65532:65532
EXPOSE 9091
ENTRYPOINT ["python3", "/app/patio.pyz"]
CMD ["--port", "9091"]
