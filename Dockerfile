# scratchbot on a CPU: slim Python, the CPU build of torch (the default PyPI wheel is a multi-GB CUDA build),
# a non-root user, and the data directory as a volume.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
COPY constraints.txt pyproject.toml README.md ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu -c constraints.txt torch==2.13.0

COPY llm ./llm
COPY bot ./bot
COPY storage ./storage
RUN pip install -c constraints.txt '.[discord,slack,postgres]' \
    && useradd --create-home --uid 10001 scratchbot \
    && mkdir -p /data && chown scratchbot:scratchbot /data

USER scratchbot
WORKDIR /data
VOLUME ["/data"]

ENTRYPOINT ["scratchbot"]
CMD ["--help"]
