# The runtime layer of Wharf's image over a root filesystem that
# build-from-host.sh assembled and imported (BASE): the same user, volume,
# environment, health check and command as the top-level Dockerfile's
# runtime stage. Built with the classic builder, which needs no registry.
ARG BASE
FROM ${BASE}
USER 10001:10001
# Settings come from WHARF_* variables (docs/configuration.md, "From the environment");
# WHARF_CONFIG names a mounted file. Flags would win over both.
ENV WHARF_ADDR=0.0.0.0:5000 WHARF_ROOT=/var/lib/wharf
WORKDIR /var/lib/wharf
EXPOSE 5000
VOLUME /var/lib/wharf
# Reads the same variables, so it asks the address actually served.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s \
  CMD ["/usr/local/bin/wharf", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/wharf"]
CMD ["serve"]
