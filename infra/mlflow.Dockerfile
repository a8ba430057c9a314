# The MLflow tracking server of infra/compose.yaml: MLflow + the PostgreSQL driver + boto3 for
# the S3 (MinIO) artifact store. The official image carries neither driver, hence this one.
# Installed from locks/mlflow-server.txt, which is resolved against the pipeline's lock: the
# server runs the very MLflow version its clients (the pipeline's venv) have.
FROM python:3.11-slim-bookworm
COPY locks/mlflow-server.txt /tmp/mlflow-server.txt
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes \
        -r /tmp/mlflow-server.txt \
    && rm /tmp/mlflow-server.txt \
    && useradd --create-home --uid 10001 mlflow
USER mlflow
EXPOSE 5000
