# Patio: one zipapp on a distroless Python.  Build: docker build -t patio .
# Stage 1 builds dist/patio.pyz from the sources (standard library only: nothing to install).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY build_pyz.sh ./
COPY patio ./patio
RUN bash build_pyz.sh

# Stage 2 holds only the zipapp, on the distroless Python 3 image, as a non-root user.
FROM gcr.io/distroless/python3-debian12:nonroot
# deploy/rootfs/packages.txt lists this base's Debian 12 packages; tests/test_rootfs.py runs the same
# root (assembled by deploy/rootfs/assemble.sh) read-only as 65532 with the pyz at /app/patio.pyz.
COPY --from=build /src/dist/patio.pyz /app/patio.pyz
# 65532 is the "nonroot" user of the distroless image; numeric so the runtime can verify non-root.
USER 65532:65532
EXPOSE 9091
ENTRYPOINT ["python3", "/app/patio.pyz"]
CMD ["--port", "9091"]
