# PostgreSQL 15 with the trempy extension preloaded. Build context: the repository root.
#   docker build -f docker/postgres.Dockerfile -t trempy-postgres .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common gnupg \
 && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
 && apt-get install -y --no-install-recommends postgresql-server-dev-15 libclang-dev clang pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-pgrx --version 0.18.1 --locked \
 && cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config
WORKDIR /src
COPY . .
RUN cargo pgrx package --package trempy --pg-config /usr/lib/postgresql/15/bin/pg_config

FROM postgres:15-bookworm
COPY --from=build /src/target/release/trempy-pg15/usr/lib/postgresql/15/lib/ /usr/lib/postgresql/15/lib/
COPY --from=build /src/target/release/trempy-pg15/usr/share/postgresql/15/extension/ /usr/share/postgresql/15/extension/
COPY extension/versions/ extension/upgrades/ /usr/share/postgresql/15/extension/
COPY docker/source-init.sh /docker-entrypoint-initdb.d/10-trempy.sh
CMD ["postgres", "-c", "wal_level=logical", "-c", "shared_preload_libraries=trempy", \
     "-c", "max_replication_slots=16", "-c", "max_wal_senders=16", "-c", "max_worker_processes=32", \
     "-c", "track_commit_timestamp=on", "-c", "max_slot_wal_keep_size=4GB"]
