# weir built from this repository, with ONNX Runtime's shared library from PyPI (and curl for the
# compose healthcheck on /readyz).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p weir-tools --bin weir

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip ca-certificates curl \
 && pip3 install --break-system-packages --no-deps --target /opt/ort onnxruntime==1.31.1 \
 && cp /opt/ort/onnxruntime/capi/libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so \
 && rm -rf /opt/ort /var/lib/apt/lists/*
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so
WORKDIR /weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY topologies topologies
COPY models models
ENTRYPOINT ["weir"]
CMD ["run", "topologies/fraud-scoring.toml", "--brokers", "kafka:9092"]
