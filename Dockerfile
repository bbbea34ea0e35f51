# sso-sidecar container image: a small, non-root Python image with only the runtime dependencies.
#   docker build -t sso-sidecar .
#   docker run -v $PWD/config.yaml:/etc/sso-sidecar/config.yaml:ro -p 4180:4180 sso-sidecar
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home sidecar
USER 10001
EXPOSE 4180
# SIGTERM drains in-flight requests (up to 30 s) before exiting; give the pod a longer grace period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4180/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["sso-sidecar"]
CMD ["run", "--config", "/etc/sso-sidecar/config.yaml"]
