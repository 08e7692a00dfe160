# syntax=docker/dockerfile:1
# Container images of taft (no Python interpreter at run time):
#   runtime (default)  the step image: every step, `taft run`, `taft serve`; libtorch (CUDA
#                      build, runs on CPU nodes too) and ONNX Runtime from the pinned PyPI wheels
#   serve              the serving build only (export's ONNX model on ONNX Runtime), no libtorch
#
#   docker build -t REGISTRY/taft:TAG .
#   docker build --target serve -t REGISTRY/taft:TAG-serve .
#   docker push REGISTRY/taft:TAG && docker push REGISTRY/taft:TAG-serve

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

# Build: the project's own bootstrap installs the pinned wheels into .venv (libtorch for tch,
# ONNX Runtime, onnx.proto), then both builds.
FROM ${RUST_IMAGE} AS build
ARG FEATURES=cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.txt requirements-nodeps.txt ./
COPY scripts/bootstrap scripts/bootstrap
RUN scripts/bootstrap
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY .cargo .cargo
COPY src src
COPY tests tests
COPY bench bench
RUN cargo build --release --locked --features "${FEATURES}" \
    && cargo build --release --locked --no-default-features --features serve --target-dir target/serve \
    && mkdir -p /opt/taft/lib /opt/taft/serve-lib \
    && site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && cp -a "$site"/torch/lib/. /opt/taft/lib/ \
    && for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && cp -a "$d"/. /opt/taft/lib/; done; \
    cp -aL .venv/libonnxruntime.so /opt/taft/lib/libonnxruntime.so \
    && cp -aL .venv/libonnxruntime.so /opt/taft/serve-lib/libonnxruntime.so

# Serving image: the ONNX Runtime build and its library.
FROM ${BASE_IMAGE} AS serve
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin taft
COPY --from=build /opt/taft/serve-lib /opt/taft/lib
COPY --from=build /src/target/serve/release/taft /usr/local/bin/taft
ENV ORT_DYLIB_PATH=/opt/taft/lib/libonnxruntime.so \
    TAFT_LOG_FORMAT=json
USER 10001
WORKDIR /home/taft
EXPOSE 8080
ENTRYPOINT ["taft"]
CMD ["serve", "--help"]

# Step image: libtorch's libraries (and the CUDA ones its wheel depends on), ONNX Runtime.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin taft
COPY --from=build /opt/taft/lib /opt/taft/lib
COPY --from=build /src/target/release/taft /usr/local/bin/taft
ENV LD_LIBRARY_PATH=/opt/taft/lib \
    ORT_DYLIB_PATH=/opt/taft/lib/libonnxruntime.so \
    TAFT_LOG_FORMAT=json
USER 10001
WORKDIR /home/taft
ENTRYPOINT ["taft"]
CMD ["--help"]
