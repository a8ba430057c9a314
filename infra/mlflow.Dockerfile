# The MLflow tracking server of infra/compose.yaml: MLflow + the PostgreSQL driver + boto3 for
# the S3 (MinIO) artifact store. The official image carries neither driver, hence this one.
# MLFLOW_VERSION: keep it >= the client's (the pipeline's venv), or the client may call APIs the
# server lacks.
FROM python:3.12-slim
ARG MLFLOW_VERSION=3.17.2
RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" psycopg2-binary boto3 \
    && useradd --create-home --uid 10001 mlflow
USER mlflow
EXPOSE 5000
