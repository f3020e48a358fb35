# trempy-applier. Build context: the repository root.
#   docker build -f docker/applier.Dockerfile -t trempy-applier .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p trempy-applier

FROM debian:bookworm-slim
RUN useradd --system --no-create-home trempy
COPY --from=build /src/target/release/trempy-applier /usr/local/bin/trempy-applier
USER trempy
ENTRYPOINT ["trempy-applier"]
CMD ["run", "--help"]
