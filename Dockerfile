# scratchbot on a CPU. Two stages: the builder installs into a virtual environment, the runtime copies only that
# environment (no compilers, no pip cache). torch comes from PyTorch's CPU index: PyPI's default wheel is a
# multi-GB CUDA build. Settings come from the environment (SCRATCHBOT_*, see .env.example).

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not reinstall torch.
COPY constraints.txt ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu -c constraints.txt torch==2.13.0+cpu
COPY pyproject.toml README.md LICENSE ./
COPY llm ./llm
COPY bot ./bot
COPY storage ./storage
RUN pip install -c constraints.txt '.[discord,slack,postgres]'

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SCRATCHBOT_DATA_DIR=/data \
    SCRATCHBOT_CHECKPOINTS_DIR=/data/checkpoints \
    SCRATCHBOT_SLACK_HTTP_HOST=0.0.0.0
COPY --from=builder /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 scratchbot \
    && mkdir -p /data/checkpoints \
    && chown -R scratchbot:scratchbot /data
USER 10001
WORKDIR /data
VOLUME ["/data"]
# Slack HTTP mode only (Socket Mode and Discord open outgoing connections): publish it behind a TLS proxy.
EXPOSE 3000
ENTRYPOINT ["scratchbot"]
CMD ["run"]
