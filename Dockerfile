# segstream image for docker-compose: the replay (and, later, the stream workers and retrain job).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY segstream ./segstream
COPY replay ./replay
COPY streams ./streams
COPY models ./models
RUN pip install --no-cache-dir .
ENTRYPOINT ["segstream"]
CMD ["--help"]
