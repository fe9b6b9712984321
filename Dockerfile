# gpu-extender: `docker build -t gpu-extender:0.1.0 .`
# The locked dependencies and the wheel are installed in a build stage; the final image has Python and
# the virtualenv only (no compiler, no pip cache) and runs as an unprivileged user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from the hashed runtime lock (scripts/lock): pip refuses any file whose
# sha256 is not in it, and anything the lock does not pin. This layer survives source changes.
COPY requirements.lock ./
RUN python -m venv /opt/gpu-extender \
 && /opt/gpu-extender/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY scoring scoring
COPY extender extender
COPY examples examples
# Then the project's own wheel, without resolving dependencies again.
RUN /opt/gpu-extender/bin/pip install --no-deps . \
 && /opt/gpu-extender/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim
ENV PATH=/opt/gpu-extender/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/gpu-extender /opt/gpu-extender
USER 65532:65532
EXPOSE 8888
ENTRYPOINT ["gpu-extender"]
CMD ["serve"]
