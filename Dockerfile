# One image for every streamrec service; docker-compose.yml picks the subcommand.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY producer producer
COPY consumer consumer
COPY serving serving
COPY offline offline
COPY evaluation evaluation
COPY streamrec streamrec
RUN pip install --no-cache-dir .
ENV STREAMREC_ARTIFACTS_DIR=/artifacts STREAMREC_DATA_DIR=/data
ENTRYPOINT ["streamrec"]
