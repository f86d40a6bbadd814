# One image for the gateway and the workers: `control-room serve` or `control-room worker`.
# Build: docker build -t control-room .    (see docs/deployment.md)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY control_room ./control_room
COPY executor ./executor
COPY pipelines ./pipelines
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip install --no-cache-dir --prefix=/install /wheels/*.whl

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 control-room
COPY --from=build /install /usr/local
# The wheel carries the migrations, the contract, the spec schema and the example specs.
WORKDIR /app
USER control-room
ENV CONTROL_ROOM_STATE_DIR=/home/control-room/state \
    CONTROL_ROOM_HOST=0.0.0.0
EXPOSE 8787
ENTRYPOINT ["tini", "--", "control-room"]
CMD ["serve"]
