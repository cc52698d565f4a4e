# Wharf's container image, built from source where base images can be
# pulled. (Machines that cannot pull, like this project's CI, build the same
# runtime layout from a host build: contrib/image/build-from-host.sh.)
#
#   docker build -t wharf .
#   docker run -d -p 5000:5000 -v wharf-data:/var/lib/wharf wharf
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wharf \
 && objcopy --strip-debug target/release/wharf /wharf

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 10001 wharf \
 && useradd -u 10001 -g wharf -d /var/lib/wharf -s /usr/sbin/nologin wharf \
 && mkdir -p /var/lib/wharf /etc/wharf \
 && chown wharf:wharf /var/lib/wharf
COPY --from=build /wharf /usr/local/bin/wharf
USER 10001:10001
WORKDIR /var/lib/wharf
EXPOSE 5000
VOLUME /var/lib/wharf
# Settings come from WHARF_* variables (README "From the environment");
# WHARF_CONFIG=/etc/wharf/wharf.toml names a mounted file. Flags win over both.
ENV WHARF_ADDR=0.0.0.0:5000 WHARF_ROOT=/var/lib/wharf
# Reads the same variables, so it asks the address actually served.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s \
  CMD ["/usr/local/bin/wharf", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/wharf"]
CMD ["serve"]
