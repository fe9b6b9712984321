# gpu-extender: `docker build -t gpu-extender:0.1.0 .`
# The wheel and its dependencies are installed in a build stage; the final image has Python and
# the virtualenv only (no compiler, no pip cache) and runs as an unprivileged user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scoring scoring
COPY extender extender
COPY examples examples
RUN python -m venv /opt/gpu-extender \
 && /opt/gpu-extender/bin/pip install . \
 && /opt/gpu-extender/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim
ENV PATH=/opt/gpu-extender/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/gpu-extender /opt/gpu-extender
USER 65532:65532
EXPOSE 8888
ENTRYPOINT ["gpu-extender"]
CMD ["serve"]
