# syntax=docker/dockerfile:1
# Container images of taft (no Python interpreter at run time):
#   runtime (default)  the step image: every step, `taft run`, `taft serve`; libtorch (CUDA
#                      build, runs on CPU nodes too) and ONNX Runtime from the pinned PyPI
#                      wheels. Needs an NVIDIA driver >= 580 for CUDA 13.0 (torch 2.11.0).
#   runtime-cpu        the step image for CPU nodes: libtorch's CPU library only, without the
#                      CUDA compute libraries (cuBLAS, cuDNN, ...: 2.7 GB); only the CUDA
#                      runtime and CUPTI that libtorch_cpu links (5 MB) are kept
#   serve              the serving build only (export's ONNX model on ONNX Runtime), no libtorch
#
#   docker build -t REGISTRY/taft:TAG .
#   docker build --target runtime-cpu -t REGISTRY/taft:TAG-cpu .
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
COPY scripts/bootstrap scripts/image-stage scripts/
RUN scripts/bootstrap
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY .cargo .cargo
COPY src src
COPY tests tests
COPY bench bench
# The CPU build first, then the step image's build in the same target directory (only taft
# itself is rebuilt), then the serving build; scripts/image-stage lays out under /opt/taft
# what each image copies (scripts/images runs the same layout through these stages in CI).
RUN cargo build --release --locked \
    && cp target/release/taft /tmp/taft-cpu \
    && cargo build --release --locked --features "${FEATURES}" \
    && cargo build --release --locked --no-default-features --features serve --target-dir target/serve \
    && scripts/image-stage /opt/taft /tmp/taft-cpu target/release/taft target/serve/release/taft

# Serving image: the ONNX Runtime build and its library.
FROM ${BASE_IMAGE} AS serve
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin taft
COPY --from=build /opt/taft/serve/lib /opt/taft/lib
COPY --from=build /opt/taft/serve/taft /usr/local/bin/taft
ENV ORT_DYLIB_PATH=/opt/taft/lib/libonnxruntime.so \
    TAFT_LOG_FORMAT=json
USER 10001
WORKDIR /home/taft
EXPOSE 8080
ENTRYPOINT ["taft"]
CMD ["serve", "--help"]

# Step image for CPU nodes: libtorch_cpu and the two CUDA libraries it links, ONNX Runtime.
FROM ${BASE_IMAGE} AS runtime-cpu
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin taft
COPY --from=build /opt/taft/cpu/lib /opt/taft/lib
COPY --from=build /opt/taft/cpu/taft /usr/local/bin/taft
ENV LD_LIBRARY_PATH=/opt/taft/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}} \
    ORT_DYLIB_PATH=/opt/taft/lib/libonnxruntime.so \
    TAFT_LOG_FORMAT=json
USER 10001
WORKDIR /home/taft
ENTRYPOINT ["taft"]
CMD ["--help"]

# Step image: libtorch's libraries (and the CUDA ones its wheel depends on), ONNX Runtime.
# The driver's libraries come from the node: the NVIDIA container toolkit puts them on the
# linker's path, GKE mounts them at /usr/local/nvidia.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin taft
COPY --from=build /opt/taft/lib /opt/taft/lib
COPY --from=build /opt/taft/bin/taft /usr/local/bin/taft
ENV LD_LIBRARY_PATH=/opt/taft/lib:/usr/local/nvidia/lib64:/usr/local/nvidia/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}} \
    ORT_DYLIB_PATH=/opt/taft/lib/libonnxruntime.so \
    TAFT_LOG_FORMAT=json
USER 10001
WORKDIR /home/taft
ENTRYPOINT ["taft"]
CMD ["--help"]
