# segstream image for docker-compose: the replay, the stream workers, the retrain job and the live view.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY segstream ./segstream
COPY replay ./replay
COPY streams ./streams
COPY models ./models
RUN pip install --no-cache-dir .
# not root: a user of its own, owning only the state directory (replay checkpoints, models)
RUN useradd --create-home --uid 10001 segstream && mkdir /state && chown segstream /state
USER segstream
ENTRYPOINT ["segstream"]
CMD ["--help"]
