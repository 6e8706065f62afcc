# Switchyard: build the `dist` binary (release + fat LTO), then run it on a slim image. The model is not baked in:
# docker-compose mounts ./models (fetch it with `make model` first).
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake clang libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Built with cargo directly, llama.cpp gets the portable AVX2/FMA/F16C baseline (no instruction-set
# GGML_* from scripts/ggml-cpu-flags.sh): the image runs on any x86-64 host. Without llamafile's
# kernels, as `make` builds, so that [local].batch_invariant holds (see the script).
RUN GGML_LLAMAFILE=OFF cargo build --profile dist --locked -p gateway --bin switchyard

FROM debian:bookworm-slim
# libgomp1: llama.cpp's OpenMP threads; ca-certificates: TLS to remote providers.
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgomp1 ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/dist/switchyard /usr/local/bin/switchyard
COPY config ./config
COPY policies ./policies
EXPOSE 8080
ENTRYPOINT ["switchyard"]
CMD ["serve", "--config", "config/docker.toml"]
